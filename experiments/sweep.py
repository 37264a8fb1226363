"""A grid sweep: controllers x sparsities x seeds (seeds in one program per cell).

    python -m experiments.sweep --workdir /tmp/sweep \
        --controllers=dense,gmp,rigl --sparsities=0.9,0.95 --seeds=8

Each finished cell (controller, sparsity) appends one row per seed to ``WORKDIR/results.csv``;
cells already there are skipped, so an interrupted sweep resumes where it stopped (a cell
interrupted midway also resumes from its orbax checkpoint). At the end it writes
``results.md`` (mean ± 95% CI of test accuracy and the final sparsity per cell) and
``accuracy_vs_sparsity.png``. The grid and the report are :mod:`emrakul.lab.sweeps.classifier`.

``--shard`` splits each cell's seeds over all devices (the seed count must be a multiple of the
device count); the multi-host flags of :mod:`experiments.scale_flags` run one sweep over
several processes, of which only process 0 writes files.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab.config import apply_runtime_options, validate
from emrakul.lab.sweeps import classifier
from experiments.scale_flags import SHARD, start

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"), "Base config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_CONTROLLERS = flags.DEFINE_list("controllers", ["dense", "gmp", "rigl"], "Controllers.")
_SPARSITIES = flags.DEFINE_list("sparsities", ["0.9", "0.95"], "Target sparsities.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds per cell (one program; config.run.seed_loop).")


def main(argv) -> None:
    del argv
    writer = start()  # joins a multi-host runtime when asked; only process 0 writes files
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    base = _CONFIG.value
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    names = [c.strip() for c in _CONTROLLERS.value]
    sparsities = [float(s) for s in _SPARSITIES.value]
    validate(base, names)
    apply_runtime_options(base)
    # every process of a multi-process run computes every cell (its shards): no cell locks
    grid = classifier.sweep_grid(workdir, write=writer, locks=jax.process_count() == 1)
    classifier.run_sweep(
        base, workdir, names, sparsities, seeds=_SEEDS.value, shard=SHARD.value, grid=grid
    )
    if writer:
        print(classifier.write_report(workdir))


if __name__ == "__main__":
    app.run(main)
