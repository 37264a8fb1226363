"""The main job: train MNIST-1D hosts while Emrakul controllers prune them; print a table.

    python -m experiments.train --workdir /tmp/emrakul
    python -m experiments.train --workdir /tmp/rigl --config.compare=rigl --config.seeds=8

Writes into ``--workdir``: ``metrics.jsonl`` (one row per controller, seed and surgery
interval), ``summary.json`` and ``summary.md`` (final test accuracy mean and 95% CI, final
sparsity), ``accuracy_loss.png``, ``layer_sparsity.png``, ``mask_churn.png``, and orbax
checkpoints under ``checkpoints/`` from which an interrupted run resumes.

With an RL config (one that has an ``rl`` field, e.g. ``experiments/configs/cartpole_dqn.py``)
it trains a DQN host (:mod:`emrakul.lab.hosts.dqn`) per controller instead, seeds vmapped, and
writes ``rl_metrics.jsonl`` (one row per controller, seed and surgery interval), ``summary.md``
(return of the episodes of the last 20% of training, mean and 95% CI; final sparsity) and
``returns.png``; it checkpoints each controller's run under ``checkpoints/`` and resumes.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab.config import apply_runtime_options, validate
from emrakul.lab.runner import run_controller
from experiments import report
from experiments.scale_flags import SHARD, start

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"), "Experiment config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def controllers_of(config) -> list[str]:
    """The controllers to run: ``config.compare`` (a list or comma-separated string)."""
    compare = config.compare
    if isinstance(compare, str):
        compare = [c.strip() for c in compare.split(",") if c.strip()]
    return list(compare) or [config.controller]


def _main_rl(config, workdir: str) -> None:
    """The RL branch: a DQN host per controller, seeds vmapped, driven in checkpointed chunks by
    the MinAtar sweep's :func:`~experiments.minatar_sweep.run_cell` (so it resumes too)."""
    import json

    import numpy as np

    from emrakul.lab import stats
    from emrakul.lab.hosts import dqn
    from experiments import minatar_sweep as sweep

    base = dqn.DQNConfig(**dict(config.rl))
    names = controllers_of(config)
    seeds = [int(config.seed_offset) + i for i in range(int(config.seeds))]
    rows, table = [], []
    curves = {}
    for name in names:
        host = dqn.make_dqn(base, name)
        cell = sweep.run_cell(
            host,
            seeds,
            checkpoint_dir=os.path.join(workdir, "checkpoints", name),
            chunk=int(config.chunk),
            label=name,
        )
        m = cell.metrics
        finals = sweep.final_return(m.return_sum, m.episodes, 0.2)
        for i, seed in enumerate(seeds):
            for j in range(m.env_steps.shape[1]):
                rows.append({"controller": name, "seed": seed,
                             "interval": j, "env_steps": int(m.env_steps[i, j]),
                             "mean_return": float(m.mean_return[i, j]),
                             "sparsity": float(m.sparsity[i, j])})  # fmt: skip
        mean, ci = stats.mean_ci(finals)
        table.append((name, mean, ci, abs(float(np.mean(m.sparsity[:, -1]))), cell.seconds))
        curves[name] = (m.env_steps[0], m.return_sum, m.episodes)
    with open(os.path.join(workdir, "rl_metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    lines = [
        f"{base.env_name} DQN, {base.total_env_steps} env steps, {int(config.seeds)} seeds; "
        "return = mean over the episodes of the last 20% of training",
        "",
        "| controller | return (mean ± 95% CI) | final sparsity | wall s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {m:.1f} ± {c:.1f} | {s:.4f} | {w:.0f} |" for n, m, c, s, w in table]
    text = "\n".join(lines)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(text + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (steps, ret, eps) in curves.items():
        ax.plot(steps, np.sum(ret, 0) / np.maximum(np.sum(eps, 0), 1), label=name)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean episode return (all seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "returns.png"), dpi=100)
    print(text)
    print(f"\nwrote {workdir}/rl_metrics.jsonl, summary.md and returns.png")


def main(argv) -> None:
    del argv
    writer = start()  # joins a multi-host runtime when asked; only process 0 writes reports
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    if "rl" in config:
        if SHARD.value:
            raise app.UsageError("--shard applies to the classifier job, not the RL branch")
        os.makedirs(_WORKDIR.value, exist_ok=True)
        _main_rl(config, _WORKDIR.value)
        return
    names = controllers_of(config)
    validate(config, names)
    apply_runtime_options(config)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    if writer:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    results = []
    for name in names:
        results.append(
            run_controller(
                config,
                name,
                seeds=int(config.seeds),
                seed_offset=int(config.seed_offset),
                workdir=workdir if config.run.checkpoint else None,
                chunk=int(config.run.chunk),
                shard=SHARD.value,
            )
        )
    if not writer:
        return
    summary = report.write(workdir, results, target=float(config.prune.sparsity))
    print(report.markdown(summary, float(config.prune.sparsity)))
    print(f"\nwrote {workdir}/metrics.jsonl, summary.json, summary.md and plots")


if __name__ == "__main__":
    app.run(main)
