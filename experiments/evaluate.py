"""Paired evaluation: hosts x sparsities x arms on the same fresh seeds; best heuristic on val.

    python -m experiments.evaluate --workdir /work/runs/headroom \
        --hosts=meta,default --sparsities=0.9,0.95 \
        --arms=gmp:uniform,gmp:erk,breathing:uniform,breathing:erk,rigl:uniform,rigl:erk \
        --seeds=8 --seed_offset=1000

An arm is ``[alias=]controller[:uniform|erk]``; an alias takes its keyword arguments from
``--set=ALIAS.KEY=VALUE,...`` (e.g. ``--arms=learned=magistrate:erk
--set=learned.policy=DIR/policy.msgpack``). Hosts are the presets of
:data:`emrakul.lab.sweeps.paired.HOSTS`, with 2,400 validation and 5,000 test examples. Rows go
to ``WORKDIR/results.jsonl`` (resumable: finished cells are skipped, an interrupted cell resumes
from its checkpoint); ``WORKDIR/report.md`` has, per host and sparsity, the best heuristic chosen
on validation accuracy and every arm's paired test difference to it (mean and 95% t interval).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab import grid as grid_lib
from emrakul.lab.report import write_atomic
from emrakul.lab.sweeps import paired, paired_report

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"), "Base config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_HOSTS = flags.DEFINE_list("hosts", ["meta", "default"], "Host presets.")
_SPARSITIES = flags.DEFINE_list("sparsities", ["0.9", "0.95"], "Target sparsities.")
_ARMS = flags.DEFINE_list(
    "arms",
    ["gmp:uniform", "gmp:erk", "breathing:uniform", "breathing:erk", "rigl:uniform", "rigl:erk"],
    "Arms: [alias=]controller[:uniform|erk].",
)
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds per cell (one program).")
_SEED_OFFSET = flags.DEFINE_integer("seed_offset", 1000, "First seed (fresh seeds: >= 1000).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rewrite report.md.")
_SET = flags.DEFINE_list("set", [], "Arm keyword arguments: ALIAS.KEY=VALUE entries.")
_TRACE = flags.DEFINE_list(
    "trace", [], "Arms (magistrate / planned) whose plans to plot: specs or labels of --arms."
)


def with_arm_kwargs(config, entries):
    """``config`` with ``controllers.ALIAS.KEY = VALUE`` for every ``ALIAS.KEY=VALUE`` entry.

    Raises:
      app.UsageError: an entry not of that form.
    """
    config = config.copy_and_resolve_references()
    config.unlock()
    for entry in entries:
        target, sep, value = entry.partition("=")
        alias, dot, key = target.partition(".")
        if not (sep and dot and alias and key):
            raise app.UsageError(f"--set entry {entry!r} is not ALIAS.KEY=VALUE")
        kwargs = dict(config.controllers.get(alias, {}))
        kwargs[key] = value
        config.controllers[alias] = kwargs
    return config


def plot_plans(config, workdir: str, host: str, sparsity: float, labels) -> None:
    """``plans_HOST_SP_LABEL.png``: what each traced arm decided on seed 1000 of ``host``."""
    from emrakul.lab.build import make_controller
    from emrakul.lab.sweeps import plan_trace

    for arm in (paired.parse_arm(a) for a in labels):
        cell = paired.Cell(host, sparsity, arm)
        cfg = paired.cell_config(config, cell)
        kwargs = dict(cfg.controllers.get(arm.controller, {}))
        controller = make_controller(arm.controller, {arm.controller: kwargs})
        t = plan_trace.trace(cfg, controller, plan_trace.space_of(arm.controller, kwargs))
        name = f"plans_{cell.name}.png"
        plan_trace.plot(t, os.path.join(workdir, name), f"{arm.label} on {host} at {sparsity:g}")
        print(f"wrote {name}")


def trace_specs(trace: list[str], arms: list[str]) -> list[str]:
    """The arm specs of ``--trace`` entries: an entry that is the label of an ``--arms`` arm
    (e.g. ``learned`` for ``learned=magistrate:erk``) stands for that arm.

    Raises:
      ValueError: an entry that is neither a label of ``arms`` nor a magistrate / planned spec.
    """
    by_label = {paired.parse_arm(a).label: a for a in arms}
    specs = [by_label.get(t, t) for t in trace]
    for spec in specs:
        if paired.parse_arm(spec).controller not in ("magistrate", "planned"):
            raise ValueError(f"--trace {spec!r}: not a magistrate or planned arm of --arms")
    return specs


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    traced = trace_specs(_TRACE.value, _ARMS.value)
    config = with_arm_kwargs(_CONFIG.value, _SET.value)
    if not _REPORT_ONLY.value:
        paired.run_paired(config, workdir, _HOSTS.value,
                          [float(s) for s in _SPARSITIES.value], _ARMS.value,
                          seeds=_SEEDS.value, seed_offset=_SEED_OFFSET.value)  # fmt: skip
    if traced:
        for host in _HOSTS.value:
            for sp in _SPARSITIES.value:
                plot_plans(config, workdir, host, float(sp), traced)
    rows = grid_lib.read_rows(os.path.join(workdir, paired.RESULTS))
    md = paired_report.markdown(rows)
    write_atomic(os.path.join(workdir, "report.md"), md)
    print(md)


if __name__ == "__main__":
    app.run(main)
