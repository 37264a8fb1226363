"""The resumable MinAtar sweep: DQN on gymnax MinAtar games, pruned while it learns.

    python -m experiments.minatar_sweep --workdir DIR [--config experiments/configs/minatar.py]
        [--config.games=Breakout-MinAtar --config.arms=dense,gmp --config.widths=1 ...]
    python -m experiments.minatar_sweep --workdir DIR --report_only

A *cell* is one game x arm x sparsity x width (fields: ``experiments/configs/minatar.py``), its
seeds vmapped in one compiled program driven in checkpointed chunks, so an interrupted cell
resumes from its last chunk and a sweep can be spread over several sessions sharing one
``DIR``. Finished cells append their rows to ``DIR/results.jsonl``; after each, the report is
rewritten (``summary.md``, ``summary.json``, ``curves_<game>.png``, ``profile.png``). The plan,
the run and the report are :mod:`emrakul.lab.sweeps.minatar`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab.sweeps import minatar


def define_flags(
    flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None
) -> None:
    """Defines ``--config``, ``--workdir`` and ``--report_only``.

    Called only when this module runs as a program, so that importing it defines no global
    flags. ``argv``: the command line whose ``--config.FIELD`` overrides apply (default:
    ``sys.argv``), for a private ``flag_values`` parsed in-process.
    """
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(os.path.dirname(__file__), "configs", "minatar.py"),
        "Sweep config.",
        flag_values=flag_values,
        sys_argv=argv,
    )
    flags.DEFINE_string("workdir", None, "Output directory.", flag_values=flag_values)
    flags.DEFINE_bool(
        "report_only", False, "Only write the report from results.", flag_values=flag_values
    )


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Runs the sweep (or only the report) from the parsed flags."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config, workdir = flag_values.config, flag_values.workdir
    if not workdir:
        sys.exit("error: --workdir is required")
    games = minatar.split(config, "games")
    if flag_values.report_only:
        if not os.path.isdir(workdir):
            sys.exit(f"error: --workdir {workdir} does not exist")
        print(minatar.write_report(workdir, minatar.read_results(workdir), games))
        return
    try:
        statuses = minatar.run_sweep(config, workdir)
    except ValueError as e:
        sys.exit(f"error: {e}")
    ran = sum(s.status == "done" for s in statuses)
    print(f"{ran} cell(s) run, {sum(s.status == 'skipped' for s in statuses)} already done")
    print(minatar.write_report(workdir, minatar.read_results(workdir), games))


if __name__ == "__main__":
    define_flags()
    app.run(main)
