"""A paired evaluation: hosts x sparsities x arms on the same seeds, one program per cell.

An *arm* is a controller with a per-layer budget distribution (``gmp:erk``, ``breathing:uniform``)
and optionally an alias (``ceiling=planned:erk``: the alias names the arm in the tables and picks
its keyword arguments from ``config.controllers.<alias>``). A *host* is a named preset of the
classifier config (:data:`emrakul.lab.hosts.presets.HOSTS`). Every cell runs the same seeds,
so arms are compared seed by seed (paired differences,
:mod:`emrakul.lab.sweeps.paired_report`). Rows go to ``DIR/results.jsonl`` on the resumable grid
(:mod:`emrakul.lab.grid`): the validation accuracy at the end of training (to choose the best
heuristic) and the test accuracy (to report).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections

from emrakul.lab import grid as grid_lib
from emrakul.lab.hosts.presets import EXTRA_TEST, EXTRA_VAL, HOSTS, MONITOR, host_config
from emrakul.lab.runner import run_controller

# The host presets are re-exported: evaluations and meta-training name hosts the same way.
__all__ = ["EXTRA_TEST", "EXTRA_VAL", "HOSTS", "MONITOR", "RESULTS", "Arm", "Cell", "cell_config",
           "cell_key", "host_config", "paired_grid", "parse_arm", "run_paired"]  # fmt: skip

RESULTS = "results.jsonl"


class Arm(NamedTuple):
    """A controller with a budget distribution, named ``label`` in tables."""

    label: str
    controller: str
    distribution: str


def parse_arm(spec: str) -> Arm:
    """``[alias=]controller[:distribution]`` (distribution ``uniform`` by default).

    Raises:
      ValueError: an empty spec or an unknown distribution.
    """
    spec = spec.strip()
    alias, _, rest = spec.rpartition("=")
    name, _, dist = rest.partition(":")
    dist = dist or "uniform"
    if not name or dist not in ("uniform", "erk"):
        raise ValueError(f"arm {spec!r}: expected [alias=]controller[:uniform|erk]")
    label = alias or (name if name == "dense" else f"{name}:{dist}")
    return Arm(label, name, dist)


class Cell(NamedTuple):
    """One arm on one host at one sparsity."""

    host: str
    sparsity: float
    arm: Arm

    @property
    def name(self) -> str:
        """A file-name-safe label."""
        return f"{self.host}_{self.sparsity:g}_{self.arm.label.replace(':', '-')}"


def cell_key(row_or_cell: Any) -> tuple[str, float, str]:
    """A cell's identity ``(host, sparsity, arm label)`` from a cell or a row."""
    if isinstance(row_or_cell, Cell):
        return row_or_cell.host, round(row_or_cell.sparsity, 6), row_or_cell.arm.label
    r = row_or_cell
    return r["host"], round(float(r["sparsity"]), 6), r["arm"]


def paired_grid(workdir: str) -> grid_lib.Grid:
    """The grid of a paired evaluation directory."""
    return grid_lib.Grid(
        workdir,
        RESULTS,
        key=cell_key,
        name=lambda cell: cell.name,
        checkpoint=lambda cell, seeds: os.path.join(workdir, "cells", cell.name),
    )


def cell_config(base: ml_collections.ConfigDict, cell: Cell) -> ml_collections.ConfigDict:
    """The config of one cell (host preset, sparsity, distribution, the arm's kwargs)."""
    config = host_config(base, cell.host)
    config.prune.sparsity = cell.sparsity
    config.prune.distribution = cell.arm.distribution
    kwargs = config.controllers.get(cell.arm.label, None)
    if kwargs is not None and cell.arm.label != cell.arm.controller:
        config.controllers[cell.arm.controller] = kwargs
    return config


def run_paired(
    base: ml_collections.ConfigDict,
    workdir: str,
    hosts: Sequence[str],
    sparsities: Sequence[float],
    arms: Sequence[str],
    *,
    seeds: int,
    seed_offset: int,
) -> list[grid_lib.CellStatus]:
    """Runs every unfinished cell (host by host, sparsity by sparsity, arm by arm).

    Raises:
      ValueError: an unknown host or a bad arm spec (before anything compiles).
    """
    parsed = [parse_arm(a) for a in arms]
    for h in hosts:
        host_config(base, h)
    cells = [Cell(h, float(s), a) for h in hosts for s in sparsities for a in parsed]
    grid = paired_grid(workdir)

    def run(cell: Cell, todo: list[int], ckpt: str) -> grid_lib.Finished:
        config = cell_config(base, cell)
        chunk = int(config.run.chunk)
        result = run_controller(config, cell.arm.controller, seeds=len(todo),
                                seed_offset=todo[0], workdir=ckpt, chunk=chunk)  # fmt: skip
        m = result.metrics
        rows = [
            {"host": cell.host, "sparsity": cell.sparsity, "arm": cell.arm.label, "seed": seed,
             "val_accuracy": float(result.test["val_accuracy"][i]),
             "test_accuracy": float(result.test["accuracy"][i]),
             "final_sparsity": float(m.sparsity[i, -1]), "seconds": result.seconds}
            for i, seed in enumerate(todo)
        ]  # fmt: skip
        return grid_lib.Finished(rows, result.resumed_from)

    def after(status: grid_lib.CellStatus) -> None:
        print(f"{status.cell.name}: {status.status}", flush=True)

    seed_list = list(range(seed_offset, seed_offset + seeds))
    return grid_lib.run_grid(grid, cells, seed_list, run, after=after)
