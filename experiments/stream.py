"""A living network: arms prune, revive or leave alone a host learning a non-stationary stream.

    python -m experiments.stream --workdir /tmp/stream
    python -m experiments.stream --workdir /tmp/drift --config.stream.kind=drift

Runs every arm of ``config.compare`` over ``config.seeds`` seeds on the same stream per seed
(``experiments/configs/stream.py``), prints the plasticity table, and writes into ``--workdir``
``metrics.jsonl``, ``summary.json``, ``summary.md``, ``accuracy_by_task.png`` and
``plasticity_signs.png``; each arm is checkpointed under ``checkpoints/<arm>`` after every chunk
of tasks, and a run started again with the same workdir resumes.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab.sweeps import stream, stream_report

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "stream.py"), "Stream config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    arms = stream.arm_names(config.compare)
    stream.check_config(config, arms)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    ckpt = workdir if config.run.checkpoint else None
    results = [stream.run_arm(config, arm, workdir=ckpt) for arm in arms]
    print(stream_report.markdown(stream_report.write(workdir, results)))
    print(f"\nwrote {workdir}/metrics.jsonl, summary.json, summary.md and plots")


if __name__ == "__main__":
    app.run(main)
