"""The main job: train MNIST-1D hosts while Emrakul controllers prune them; print a table.

    python -m experiments.train --workdir /tmp/emrakul
    python -m experiments.train --workdir /tmp/rigl --config.compare=rigl --config.seeds=8

Writes into ``--workdir``: ``metrics.jsonl`` (one row per controller, seed and surgery
interval), ``summary.json`` and ``summary.md`` (final test accuracy mean and 95% CI, final
sparsity), ``accuracy_loss.png``, ``layer_sparsity.png``, ``mask_churn.png``, and orbax
checkpoints under ``checkpoints/`` from which an interrupted run resumes.

With an RL config (one that has an ``rl`` field, e.g. ``experiments/configs/cartpole_dqn.py``)
it trains a DQN host per controller instead, seeds vmapped (:mod:`emrakul.lab.sweeps.dqn_compare`),
and writes ``rl_metrics.jsonl`` (one row per controller, seed and surgery interval), ``summary.md``
(return of the episodes of the last 20% of training, mean and 95% CI; final sparsity) and
``returns.png``; it checkpoints each controller's run under ``checkpoints/`` and resumes.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab.config import apply_runtime_options, validate
from emrakul.lab.runner import run_controller
from emrakul.lab.sweeps import classifier_compare as report
from emrakul.lab.sweeps import dqn_compare
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


def main(argv) -> None:
    del argv
    writer = start()  # joins a multi-host runtime when asked; only process 0 writes reports
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    if "rl" in config:
        if SHARD.value:
            raise app.UsageError("--shard applies to the classifier job, not the RL branch")
        os.makedirs(_WORKDIR.value, exist_ok=True)
        print(dqn_compare.run(config, _WORKDIR.value, controllers_of(config)))
        print(f"\nwrote {_WORKDIR.value}/rl_metrics.jsonl, summary.md and returns.png")
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
