"""The main job: train MNIST-1D hosts while Emrakul controllers prune them; print a table.

    python -m experiments.train --workdir /tmp/emrakul
    python -m experiments.train --workdir /tmp/rigl --config.compare=rigl --config.seeds=8

Writes into ``--workdir``: ``metrics.jsonl`` (one row per controller, seed and surgery
interval), ``summary.json`` and ``summary.md`` (final test accuracy mean and 95% CI, final
sparsity), ``accuracy_loss.png``, ``layer_sparsity.png``, ``mask_churn.png``, and orbax
checkpoints under ``checkpoints/`` from which an interrupted run resumes.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.config import validate
from emrakul.runner import run_controller
from experiments import report

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
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    names = controllers_of(config)
    validate(config, names)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
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
            )
        )
    summary = report.write(workdir, results, target=float(config.prune.sparsity))
    print(report.markdown(summary, float(config.prune.sparsity)))
    print(f"\nwrote {workdir}/metrics.jsonl, summary.json, summary.md and plots")


if __name__ == "__main__":
    app.run(main)
