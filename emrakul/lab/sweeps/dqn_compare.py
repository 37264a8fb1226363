"""The main job's RL branch: a DQN host per controller on one game, seeds vmapped.

Each controller's seeds run as one chunked, checkpointed program
(:func:`emrakul.lab.rl_cell.run_cell`, under ``DIR/checkpoints/<controller>``, so an
interrupted run resumes). Written into the work directory: ``rl_metrics.jsonl`` (one row per
controller, seed and surgery interval), ``summary.md`` (the return of the episodes of the last
20% of training, mean and 95% Student-t CI; final sparsity; wall time) and ``returns.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from emrakul.lab.hosts import dqn
from emrakul.lab.rl_cell import CellRun, run_cell
from emrakul.lab.stats import mean_ci
from emrakul.lab.sweeps.minatar.run import final_return

FINAL_FRACTION = 0.2  # the share of training whose episodes make the reported return


class ControllerRun(NamedTuple):
    """One controller's finished run."""

    name: str
    run: CellRun


def metric_rows(runs: Sequence[ControllerRun], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The ``rl_metrics.jsonl`` rows: one per controller, seed and surgery interval."""
    rows = []
    for name, cell in runs:
        m = cell.metrics
        for i, seed in enumerate(seeds):
            for j in range(m.env_steps.shape[1]):
                rows.append({"controller": name, "seed": seed,
                             "interval": j, "env_steps": int(m.env_steps[i, j]),
                             "mean_return": float(m.mean_return[i, j]),
                             "sparsity": float(m.sparsity[i, j])})  # fmt: skip
    return rows


def markdown(base: dqn.DQNConfig, seeds: int, runs: Sequence[ControllerRun]) -> str:
    """The summary table: return of the last 20% of training, final sparsity, wall time."""
    lines = [
        f"{base.env_name} DQN, {base.total_env_steps} env steps, {seeds} seeds; "
        "return = mean over the episodes of the last 20% of training",
        "",
        "| controller | return (mean ± 95% CI) | final sparsity | wall s |",
        "|---|---|---|---|",
    ]
    for name, cell in runs:
        m = cell.metrics
        mean, ci = mean_ci(final_return(m.return_sum, m.episodes, FINAL_FRACTION))
        sparsity = abs(float(np.mean(m.sparsity[:, -1])))
        lines.append(f"| {name} | {mean:.1f} ± {ci:.1f} | {sparsity:.4f} | {cell.seconds:.0f} |")
    return "\n".join(lines)


def plot_returns(runs: Sequence[ControllerRun], path: str) -> None:
    """Mean episode return over all seeds against environment steps, per controller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, cell in runs:
        m = cell.metrics
        ret = np.sum(m.return_sum, 0) / np.maximum(np.sum(m.episodes, 0), 1)
        ax.plot(m.env_steps[0], ret, label=name)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean episode return (all seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str, controllers: Sequence[str]) -> str:
    """Runs every controller of an RL config (``config.rl``: a :class:`DQNConfig`'s fields) and
    writes the outputs; returns the summary markdown."""
    base = dqn.DQNConfig(**dict(config.rl))
    seeds = [int(config.seed_offset) + i for i in range(int(config.seeds))]
    runs = []
    for name in controllers:
        cell = run_cell(
            dqn.make_dqn(base, name),
            seeds,
            checkpoint_dir=os.path.join(workdir, "checkpoints", name),
            chunk=int(config.chunk),
            label=name,
        )
        runs.append(ControllerRun(name, cell))
    with open(os.path.join(workdir, "rl_metrics.jsonl"), "w") as f:
        for r in metric_rows(runs, seeds):
            f.write(json.dumps(r) + "\n")
    text = markdown(base, int(config.seeds), runs)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(text + "\n")
    plot_returns(runs, os.path.join(workdir, "returns.png"))
    return text
