"""The paired evaluation's report: the best heuristic chosen on validation, paired differences.

Per host and sparsity, the *best heuristic* is the heuristic arm with the highest mean validation
accuracy at the end of training (never the test accuracy); every other arm is then compared
with it seed by seed on the test accuracy: the mean paired difference and its Student-t 95%
interval (:func:`emrakul.lab.stats.mean_ci`), and how many seeds it wins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from emrakul.lab.report import fmt_ci, markdown_table
from emrakul.lab.stats import mean_ci

#: Arm labels that count as heuristics when choosing the best one (controller part).
HEURISTICS = ("gmp", "breathing", "rigl", "set", "gsnr", "dsd", "harmonic", "snip", "one_shot")


def is_heuristic(label: str) -> bool:
    """Whether an arm label names a heuristic (``gmp:erk``, ``rigl:uniform``...)."""
    return label.split(":")[0] in HEURISTICS


class Comparison(NamedTuple):
    """One arm against the best heuristic of its host and sparsity."""

    arm: str
    test: tuple[float, float]  # mean, 95% half-width
    val: float
    diff: tuple[float, float]  # paired test difference to the best heuristic, mean, half-width
    wins: int
    seeds: int


def _by(rows: Iterable[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def best_heuristic(arms: dict[str, list[dict[str, Any]]]) -> str | None:
    """The heuristic arm with the highest mean validation accuracy (``None`` if none)."""
    scores = {a: np.mean([r["val_accuracy"] for r in rs]) for a, rs in arms.items()
              if is_heuristic(a)}  # fmt: skip
    return max(scores, key=scores.get) if scores else None


def compare(arms: dict[str, list[dict[str, Any]]], best: str | None) -> list[Comparison]:
    """Every arm of one (host, sparsity) against ``best``, paired on common seeds."""
    base = {r["seed"]: r["test_accuracy"] for r in arms.get(best, [])}
    out = []
    for arm, rs in sorted(arms.items()):
        test = mean_ci([r["test_accuracy"] for r in rs])
        val = float(np.mean([r["val_accuracy"] for r in rs]))
        common = [r for r in rs if r["seed"] in base]
        d = [r["test_accuracy"] - base[r["seed"]] for r in common]
        diff = mean_ci(d) if d and arm != best else (math.nan, math.nan)
        wins = sum(x > 0 for x in d)
        out.append(Comparison(arm, test, val, diff, wins, len(common)))
    return out


def summary(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, float], tuple[str, list]]:
    """``(host, sparsity) -> (best heuristic, comparisons)``."""
    out = {}
    for (host, sp), rs in sorted(_by(rows, "host", "sparsity").items()):
        arms = {k[0]: v for k, v in _by(rs, "arm").items()}
        best = best_heuristic(arms)
        out[(host, float(sp))] = (best, compare(arms, best))
    return out


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One table per (host, sparsity): test accuracy, validation accuracy, paired difference."""
    parts = []
    for (host, sp), (best, comps) in summary(rows).items():
        parts.append(f"### {host} at {sp:g} (best heuristic on validation: {best})\n")
        head = ["arm", "seeds", "test accuracy", "val accuracy", "test - best heuristic", "wins"]
        body = [
            [c.arm + (" (best)" if c.arm == best else ""), c.seeds, fmt_ci(*c.test, digits=4),
             f"{c.val:.4f}", fmt_ci(*c.diff, digits=4) if c.arm != best else "-",
             f"{c.wins}/{c.seeds}" if c.arm != best else "-"]
            for c in comps
        ]  # fmt: skip
        parts.append("\n".join(markdown_table(head, body)) + "\n")
    return "\n".join(parts)
