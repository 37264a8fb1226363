"""A classifier sweep: controllers x target sparsities, every cell's seeds in one program.

Each cell (controller, sparsity) runs on the shared resumable grid (:mod:`emrakul.lab.grid`)
and appends one row per seed to ``DIR/results.csv``; cells already there are skipped, so an
interrupted sweep resumes where it stopped (a cell interrupted midway also resumes from its
orbax checkpoint under ``DIR/cells/``). The report is a markdown table (mean ± 95% Student-t
CI of the test accuracy, the range of final sparsities) and an accuracy-sparsity plot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections

from emrakul.lab import grid as grid_lib
from emrakul.lab.config import validate
from emrakul.lab.runner import Result, run_controller
from emrakul.lab.stats import mean_ci

RESULTS = "results.csv"
FIELDS = ("controller", "sparsity", "seed", "test_accuracy", "test_loss", "final_sparsity",
          "flip_flops", "seconds")  # fmt: skip


class Cell(NamedTuple):
    """One controller at one target sparsity."""

    controller: str
    sparsity: float

    @property
    def name(self) -> str:
        """A file-name-safe label."""
        return f"{self.controller}_{self.sparsity:g}"


def cell_key(row_or_cell: Any) -> tuple[str, float]:
    """A cell's identity ``(controller, sparsity)``, from a :class:`Cell` or a CSV row."""
    if isinstance(row_or_cell, Cell):
        return row_or_cell.controller, round(row_or_cell.sparsity, 6)
    return row_or_cell["controller"], round(float(row_or_cell["sparsity"]), 6)


def sweep_grid(workdir: str, *, write: bool = True, locks: bool = True) -> grid_lib.Grid:
    """The grid of a classifier sweep's directory (``results.csv``, ``locks/``, ``cells/``)."""
    return grid_lib.Grid(
        workdir,
        RESULTS,
        key=cell_key,
        name=lambda cell: cell.name,
        checkpoint=lambda cell, seeds: os.path.join(workdir, "cells", cell.name),
        fields=FIELDS,
        write=write,
        locks=locks,
    )


def result_rows(cell: Cell, seeds: Sequence[int], result: Result) -> list[dict[str, Any]]:
    """The ``results.csv`` rows of a finished cell, one per seed."""
    m = result.metrics
    return [
        {
            "controller": cell.controller,
            "sparsity": cell.sparsity,
            "seed": seed,
            "test_accuracy": float(result.test["accuracy"][i]),
            "test_loss": float(result.test["loss"][i]),
            "final_sparsity": float(m.sparsity[i, -1]),
            "flip_flops": int(m.reversals[i, -1].sum()),
            "seconds": result.seconds,
        }
        for i, seed in enumerate(seeds)
    ]


def run_sweep(
    base: ml_collections.ConfigDict,
    workdir: str,
    controllers: Sequence[str],
    sparsities: Sequence[float],
    *,
    seeds: int,
    shard: bool = False,
    grid: grid_lib.Grid | None = None,
) -> list[grid_lib.CellStatus]:
    """Runs every unfinished (controller, sparsity) cell, sparsity by sparsity.

    Args:
      base: the experiment config (``experiments/configs/default.py``); ``prune.sparsity`` is
        set per cell.
      workdir: the output directory.
      controllers: controller names.
      sparsities: target sparsities.
      seeds: seeds per cell (``0 .. seeds - 1``), one program.
      shard: split each cell's seeds over all devices.
      grid: the grid to run on (default :func:`sweep_grid`; a multi-process run passes one
        that writes only in process 0 and takes no locks).

    Raises:
      ValueError: a bad config field, named, before anything compiles; seeds to add to a cell
        that are not one contiguous range.
    """
    grid = grid or sweep_grid(workdir)
    validate(base, list(controllers))
    cells = [Cell(name, float(sp)) for sp in sparsities for name in controllers]

    def run(cell: Cell, todo: list[int], ckpt: str) -> grid_lib.Finished:
        if todo != list(range(todo[0], todo[0] + len(todo))):
            raise ValueError(f"cell {cell.name}: seeds {todo} to add are not contiguous")
        config = base.copy_and_resolve_references()
        config.prune.sparsity = cell.sparsity
        validate(config, [cell.controller])
        result = run_controller(config, cell.controller, seeds=len(todo), seed_offset=todo[0],
                                workdir=ckpt, chunk=int(config.run.chunk), shard=shard)  # fmt: skip
        return grid_lib.Finished(result_rows(cell, todo, result))

    def after(status: grid_lib.CellStatus) -> None:
        if status.status in ("skipped", "busy"):
            why = "already in" if status.status == "skipped" else "another process runs it; see"
            print(f"skip {status.cell.controller} @ {status.cell.sparsity}: {why} {grid.path}")

    return grid_lib.run_grid(grid, cells, list(range(seeds)), run, after=after)


def table(rows: Sequence[dict]) -> str:
    """Markdown: one line per cell, mean ± 95% CI of the test accuracy and final sparsity."""
    cells: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["controller"], float(r["sparsity"])), []).append(r)
    lines = [
        "| controller | target sparsity | seeds | test accuracy (mean ± 95% CI) | final sparsity |",
        "|---|---|---|---|---|",
    ]
    for (name, sp), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m, ci = mean_ci([float(r["test_accuracy"]) for r in rs])
        fs = [float(r["final_sparsity"]) for r in rs]
        lines.append(
            f"| {name} | {sp:g} | {len(rs)} | {m:.4f} ± {ci:.4f} | {min(fs):.4f}-{max(fs):.4f} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: str) -> None:
    """Test accuracy (mean ± 95% CI over seeds) against target sparsity, per controller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r["controller"] for r in rows}):
        sps = sorted({float(r["sparsity"]) for r in rows if r["controller"] == name})
        stats = [
            mean_ci([float(r["test_accuracy"]) for r in rows
                     if r["controller"] == name and float(r["sparsity"]) == sp])
            for sp in sps
        ]  # fmt: skip
        ax.errorbar(sps, [s[0] for s in stats], yerr=[s[1] for s in stats], label=name,
                    marker="o", capsize=3)  # fmt: skip
    ax.set_xlabel("target sparsity")
    ax.set_ylabel("test accuracy (mean ± 95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(workdir: str) -> str:
    """Writes ``results.md`` and ``accuracy_vs_sparsity.png`` from ``results.csv``; returns the
    markdown."""
    rows = grid_lib.read_rows(os.path.join(workdir, RESULTS))
    md = table(rows)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(md + "\n")
    plot(rows, os.path.join(workdir, "accuracy_vs_sparsity.png"))
    return md
