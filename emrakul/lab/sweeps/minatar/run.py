"""Running the MinAtar sweep: each cell's seeds as one chunked, checkpointed DQN program.

The cells of :func:`~emrakul.lab.sweeps.minatar.plan.make_plan` run on the shared resumable grid
(:mod:`emrakul.lab.grid`): a finished cell appends one ``results.jsonl`` row per seed and
deletes its checkpoints, an interrupted one resumes from its last chunk, and several processes
can share one work directory.

A ``results.jsonl`` row: ``game, arm, controller, pooling, sparsity`` (0 for dense arms),
``width, seed, env_steps`` (taken), ``total_env_steps`` (configured), ``updates,
final_return`` (mean return of the training episodes that ended in the last ``final_fraction``
of the surgery intervals), ``final_fraction, final_episodes, final_sparsity, wall_seconds``
(the cell's wall time, all seeds together, compilation included), ``cell_seeds`` and ``curve``
(per surgery interval: ``env_steps, mean_return`` (null when no episode ended), ``episodes,
loss, sparsity``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from emrakul import controllers as ctl
from emrakul.lab import grid as grid_lib
from emrakul.lab.hosts import dqn
from emrakul.lab.rl_cell import CellRun, build_program, run_cell
from emrakul.lab.sweeps.minatar import summary
from emrakul.lab.sweeps.minatar.plan import Cell, Plan, cell_config, check_locked, make_plan, split

RESULTS = "results.jsonl"


def final_return(return_sum: np.ndarray, episodes: np.ndarray, fraction: float) -> np.ndarray:
    """Per seed, the mean return of the episodes that ended in the last ``fraction`` of the
    intervals (``[..., intervals]`` inputs; NaN where none ended)."""
    k = max(1, round(np.shape(return_sum)[-1] * fraction))
    total = np.asarray(return_sum, np.float64)[..., -k:].sum(-1)
    count = np.asarray(episodes)[..., -k:].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def result_rows(
    cell: Cell, plan: Plan, config: dqn.DQNConfig, seeds: Sequence[int], result: CellRun
) -> list[dict[str, Any]]:
    """The ``results.jsonl`` rows of a finished cell, one per seed."""
    m = result.metrics
    final = final_return(m.return_sum, m.episodes, plan.final_fraction)
    k = max(1, round(m.episodes.shape[-1] * plan.final_fraction))
    rows = []
    for i, seed in enumerate(seeds):
        rows.append(
            {
                "game": cell.game,
                "arm": cell.arm,
                "controller": cell.controller,
                "pooling": config.pooling,
                "sparsity": cell.sparsity,
                "width": cell.width,
                "seed": int(seed),
                "env_steps": int(result.env_steps[i]),
                "total_env_steps": config.total_env_steps,
                "updates": int(result.updates[i]),
                "final_return": _num(final[i]),
                "final_fraction": plan.final_fraction,
                "final_episodes": int(m.episodes[i, -k:].sum()),
                "final_sparsity": float(m.sparsity[i, -1]),
                "wall_seconds": result.seconds,
                "cell_seeds": len(seeds),
                "curve": {
                    "env_steps": [int(v) for v in m.env_steps[i]],
                    "mean_return": [_num(v) for v in m.mean_return[i]],
                    "episodes": [int(v) for v in m.episodes[i]],
                    "loss": [_num(v) for v in m.loss[i]],
                    "sparsity": [float(v) for v in m.sparsity[i]],
                },
            }
        )
    return rows


def read_results(workdir: str) -> list[dict[str, Any]]:
    """The rows of ``DIR/results.jsonl`` (a damaged line, e.g. from a kill mid-write, is
    skipped with a warning)."""
    return grid_lib.read_rows(os.path.join(workdir, RESULTS))


def cell_key(row_or_cell: Any) -> tuple:
    """A cell's identity ``(game, arm, sparsity, width)``, from a :class:`Cell` or a row."""
    get = row_or_cell.get if isinstance(row_or_cell, dict) else row_or_cell._asdict().get
    return (get("game"), get("arm"), round(float(get("sparsity")), 6), int(get("width")))


def sweep_grid(workdir: str) -> grid_lib.Grid:
    """The grid of a MinAtar work directory: ``results.jsonl``, ``locks/``, ``checkpoints/``."""
    return grid_lib.Grid(
        workdir,
        RESULTS,
        key=cell_key,
        name=lambda cell: cell.name,
        checkpoint=lambda cell, seeds: os.path.join(
            workdir, "checkpoints", f"{cell.name}_{grid_lib.seed_label(seeds)}"
        ),
    )


def _controller(plan: Plan, cell: Cell, cache: dict[str, Any]) -> str | ctl.Controller:
    """The cell's controller: a name, or the Magistrate deploying a magistrate arm's policy file
    (each file loaded once per sweep; empty: the policy shipped in the package)."""
    if cell.controller != "magistrate":
        return cell.controller
    path = plan.policy_of(cell)
    if path not in cache:
        cache[path] = ctl.make("magistrate", policy=path)
    return cache[path]


def _announce(status: grid_lib.CellStatus, plan: Plan, progress: bool) -> None:
    if status.status == "busy":
        print(f"skip {status.cell.label()}: another process is running it", flush=True)
    elif status.status == "skipped" and progress:
        print(f"skip {status.cell.label()}: seeds {plan.seeds} already in {RESULTS}")


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    progress: bool = True,
    max_chunks: int | None = None,
) -> list[grid_lib.CellStatus]:
    """Runs every unfinished cell of ``config`` into ``workdir``; writes the report after each.

    Args:
      config: a sweep config (``experiments/configs/minatar.py``).
      workdir: the output directory (created if missing).
      progress: print progress lines.
      max_chunks: stop the first unfinished cell after this many chunks of this call and return
        (simulates an interruption; its checkpoint stays for the next call).

    Returns:
      One :class:`~emrakul.lab.grid.CellStatus` per cell of the plan, in order (up to the
      interrupted one).

    Raises:
      ValueError: a bad config field (named) or settings that differ from the ones ``workdir``
        was started with.
    """
    plan = make_plan(config)
    os.makedirs(workdir, exist_ok=True)
    check_locked(workdir, config)
    for message in plan.skipped:
        print(message, flush=True)
    games = split(config, "games")
    policies: dict[str, Any] = {}

    def run(cell: Cell, todo: list[int], ckpt: str) -> grid_lib.Finished | None:
        cfg = cell_config(plan, cell)
        program = build_program(cfg, _controller(plan, cell, policies))
        if progress:
            print(
                f"run {cell.label()}: seeds {todo}, {program.num_intervals} intervals", flush=True
            )
        result = run_cell(program, todo, checkpoint_dir=ckpt, chunk=plan.chunk,
                          label=cell.label(), progress=progress, max_chunks=max_chunks)  # fmt: skip
        if result is None:
            return None
        return grid_lib.Finished(result_rows(cell, plan, cfg, todo, result), result.resumed_from)

    def after(status: grid_lib.CellStatus) -> None:
        _announce(status, plan, progress)
        if status.status == "done":
            summary.write_report(workdir, read_results(workdir), games)

    return grid_lib.run_grid(sweep_grid(workdir), plan.cells, plan.seeds, run, after=after)
