"""Paired comparison of two controllers' final test accuracies on the same seeds.

    python -m experiments.compare --base DIR_A:gmp --other DIR_B:magistrate [--other ...]

Each ``DIR`` is an ``experiments.train`` workdir (its ``summary.json`` keeps the per-seed test
accuracies); seeds present in both are paired, and the table gives each mean and the mean of
the per-seed differences ``other - base`` with its 95% t interval (a paired test is the right
one here: both controllers train the same host initialisations on the same data order).
``--pool`` adds a row for the per-seed average of all ``--other`` runs (e.g. policies from
several meta-training seeds), paired with the base on the seeds they all share.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from emrakul.lab.stats import mean_ci

_BASE = flags.DEFINE_string("base", None, "DIR:controller of the reference.", required=True)
_OTHER = flags.DEFINE_multi_string("other", [], "DIR:controller to compare (repeatable).")
_POOL = flags.DEFINE_bool("pool", False, "Add a row pooling all --other runs per seed.")


def per_seed(spec: str) -> dict[int, float]:
    """``{seed: test accuracy}`` of ``DIR:controller``.

    Raises:
      ValueError: a malformed spec, a missing summary, or a summary without per-seed values.
    """
    if ":" not in spec:
        raise ValueError(f"expected DIR:controller, got {spec!r}")
    path, name = spec.rsplit(":", 1)
    file = os.path.join(path, "summary.json")
    if not os.path.exists(file):
        raise ValueError(f"no summary.json in {path!r}")
    with open(file) as f:
        summary = json.load(f)
    if name not in summary:
        raise ValueError(f"{file} has no controller {name!r} (has {sorted(summary)})")
    s = summary[name]
    if "seed_list" not in s:
        raise ValueError(f"{file} predates per-seed results; rerun experiments.train there")
    return dict(zip(s["seed_list"], s["test_accuracy"], strict=True))


def compare(base: str, others: list[str], pool: bool = False) -> str:
    """A markdown table of paired differences (see the module docstring)."""
    ref = per_seed(base)
    lines = [
        f"| controller | seeds | mean | {base.rsplit(':', 1)[1]} on the same seeds | "
        "paired difference (mean ± 95% CI) |",
        "|---|---|---|---|---|",
    ]
    for spec in others:
        got = per_seed(spec)
        seeds = sorted(set(got) & set(ref))
        if not seeds:
            raise ValueError(f"{spec} shares no seed with {base}")
        diff, ci = mean_ci([got[s] - ref[s] for s in seeds])
        mean_o = sum(got[s] for s in seeds) / len(seeds)
        mean_b = sum(ref[s] for s in seeds) / len(seeds)
        lines.append(f"| {spec} | {len(seeds)} | {mean_o:.4f} | {mean_b:.4f} | "
                     f"{diff:+.4f} ± {ci:.4f} |")  # fmt: skip
    if pool and others:
        runs = [per_seed(spec) for spec in others]
        seeds = sorted(set(ref).intersection(*runs))
        if not seeds:
            raise ValueError("the pooled runs share no seed with the base")
        avg = {s: sum(r[s] for r in runs) / len(runs) for s in seeds}
        diff, ci = mean_ci([avg[s] - ref[s] for s in seeds])
        mean_b = sum(ref[s] for s in seeds) / len(seeds)
        mean_o = sum(avg.values()) / len(seeds)
        lines.append(f"| pooled ({len(runs)} runs per seed) | {len(seeds)} | {mean_o:.4f} | "
                     f"{mean_b:.4f} | {diff:+.4f} ± {ci:.4f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    try:
        print(compare(_BASE.value, _OTHER.value, _POOL.value))
    except ValueError as e:
        raise SystemExit(f"experiments.compare: {e}") from None


if __name__ == "__main__":
    app.run(main)
