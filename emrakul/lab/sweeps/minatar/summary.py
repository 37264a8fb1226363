"""The MinAtar sweep's report: per-game tables, normalised aggregates, curves and profiles.

Written from ``results.jsonl`` after every finished cell (and alone with ``--report_only``):
``DIR/summary.md`` (per game, the final return of every arm x width x sparsity, mean ± 95%
Student-t CI; the interquartile mean over runs x games of the return normalised by the mean
return of dense at width 1 on the same game, with a 95% stratified-bootstrap CI, for the groups
that have every game done: Agarwal et al. 2021), ``DIR/summary.json``, ``DIR/curves_<game>.png``
(mean return against environment steps, a 95% CI band over seeds) and ``DIR/profile.png`` (the
performance profiles of the normalised scores, with bootstrap bands).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from emrakul.lab import report
from emrakul.lab.rl_cell import _clock
from emrakul.lab.stats import mean_ci
from emrakul.lab.sweeps.minatar.plan import GAP

BASELINE_ARM, BASELINE_WIDTH = "dense", 1  # the normalising baseline
BOOTSTRAP_REPS = 2000
X = "\u00d7"  # the multiplication sign of the report (dense \u00d71)


def _group_key(r: dict) -> tuple[str, int, float]:
    return (r["arm"], int(r["width"]), round(float(r["sparsity"]), 6))


def _group_label(key: tuple[str, int, float]) -> str:
    arm, width, sp = key
    return f"{arm} {X}{width}" + ("" if arm.removesuffix(GAP) == "dense" else f" @{sp:g}")


def _order(games: Sequence[str] | None, rows: Sequence[dict]) -> list[str]:
    present = list(dict.fromkeys(r["game"] for r in rows))
    first = [g for g in (games or []) if g in present]
    return first + [g for g in present if g not in first]


class Normalised(NamedTuple):
    """Normalised scores per group."""

    games: list[str]  # the games with a usable dense ×1 baseline
    baselines: dict[str, float]  # game -> mean dense ×1 final return
    unusable: dict[str, str]  # game -> why it has no usable baseline
    scores: dict[tuple, np.ndarray]  # complete groups -> [runs, games]
    incomplete: dict[tuple, list[str]]  # group -> the games it lacks ([]: no baseline at all)


def normalised_scores(rows: Sequence[dict], games: Sequence[str] | None = None) -> Normalised:
    """Final returns divided by the mean final return of dense ×1 on the same game.

    A group (arm, width, sparsity) is complete when it has runs of every game that has a usable
    baseline (some dense ×1 runs with a positive mean); its runs are the seeds it has on all of
    them, giving a ``[runs, games]`` array for :func:`stratified_bootstrap_ci`.
    """
    rows = [r for r in rows if r.get("final_return") is not None]
    order = _order(games, rows)
    baselines, unusable = {}, {}
    for g in order:
        base = [
            r["final_return"]
            for r in rows
            if r["game"] == g and (r["arm"], int(r["width"])) == (BASELINE_ARM, BASELINE_WIDTH)
        ]
        if not base:
            unusable[g] = f"no {BASELINE_ARM} {X}{BASELINE_WIDTH} runs yet"
        elif np.mean(base) <= 0:
            unusable[g] = f"{BASELINE_ARM} {X}{BASELINE_WIDTH} mean return {np.mean(base):.3g} <= 0"
        else:
            baselines[g] = float(np.mean(base))
    # sorted, not in display order: the bootstrap resamples game by game, so its CI must not
    # depend on which invocation (with which --config.games) writes the report
    usable = sorted(g for g in order if g in baselines)
    by_group: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in rows:
        by_group.setdefault(_group_key(r), {}).setdefault(r["game"], {})[int(r["seed"])] = r[
            "final_return"
        ]
    scores, incomplete = {}, {}
    for key in sorted(by_group, key=lambda k: (k[0].removesuffix(GAP) != "dense", k)):
        per_game = by_group[key]
        missing = [g for g in usable if g not in per_game]
        if missing or not usable:
            incomplete[key] = missing  # empty: no game has a baseline yet
            continue
        seeds = sorted(set.intersection(*(set(per_game[g]) for g in usable)))
        if not seeds:
            incomplete[key] = ["(no seed common to all games)"]
        else:
            scores[key] = np.asarray(
                [[per_game[g][s] / baselines[g] for g in usable] for s in seeds], np.float64
            )
    return Normalised(usable, baselines, unusable, scores, incomplete)


def _header(rows: Sequence[dict]) -> tuple[list[str], dict[str, Any]]:
    steps = sorted({int(r["env_steps"]) for r in rows})
    totals = sorted({int(r["total_env_steps"]) for r in rows})
    seeds = sorted({len(v) for v in _cells(rows).values()})
    fractions = sorted({float(r.get("final_fraction", 0.1)) for r in rows})
    lines = [
        "# MinAtar sweep: DQN pruned while it learns",
        "",
        f"Environment steps per run: {', '.join(f'{s:,}' for s in steps)} "
        f"(configured total_env_steps {', '.join(f'{t:,}' for t in totals)}, rounded down to "
        f"whole surgery intervals). Seeds per cell: {', '.join(map(str, seeds))}. "
        "Final return: mean return of the training episodes (ε-greedy) that ended in the last "
        f"{', '.join(f'{100 * f:g}%' for f in fractions)} of the surgery intervals "
        "(config.final_fraction).",
        "",
        "## Final return per game (mean ± 95% CI, Student t over seeds)",
    ]
    return lines, {"env_steps": steps, "seeds": seeds, "games": {}, "normalised": {}}


def _cells(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["game"], *_group_key(r)), []).append(r)
    return cells


def _game_table(rows: Sequence[dict], game: str) -> tuple[list[str], list[dict]]:
    """The final-return table of one game and its ``summary.json`` entries."""
    cells = _cells(rows)
    keys = sorted(
        (k for k in cells if k[0] == game),
        key=lambda k: (k[1].removesuffix(GAP) != "dense", k[1], k[2], k[3]),
    )
    table, out = [], []
    for k in keys:
        rs = cells[k]
        m, ci = mean_ci([r["final_return"] for r in rs if r["final_return"] is not None])
        sp = max(0.0, float(np.mean([r["final_sparsity"] for r in rs])))
        wall = max(r["wall_seconds"] for r in rs)
        table.append([k[1], k[2], f"{k[3]:g}", len(rs), report.fmt_ci(m, ci), f"{sp:.3f}",
                      _clock(wall)])  # fmt: skip
        out.append({"arm": k[1], "width": k[2], "sparsity": k[3], "seeds": len(rs),
                    "final_return_mean": m, "final_return_ci95": ci, "final_sparsity": sp,
                    "wall_seconds": wall})  # fmt: skip
    head = ["arm", "width", "sparsity", "seeds", "final return", "final sparsity",
            "wall time (cell)"]  # fmt: skip
    return ["", f"### {game}", "", *report.markdown_table(head, table)], out


def _normalised_section(norm: Normalised, out: dict[str, Any]) -> list[str]:
    """The IQM table of the complete groups (filling ``out['normalised']``)."""
    lines = [
        "",
        f"## Normalised score: IQM over runs {X} games (95% stratified-bootstrap CI)",
        "",
        f"Score = final return / mean final return of {BASELINE_ARM} {X}{BASELINE_WIDTH} on the "
        f"same game. Interquartile mean of all runs {X} games, percentile CI of {BOOTSTRAP_REPS} "
        "bootstrap replicates resampling seeds within each game (Agarwal et al. 2021). Only "
        "groups with every game done.",
        "",
        "Games: "
        + (
            ", ".join(f"{g} (dense {X}1: {norm.baselines[g]:.2f})" for g in norm.games)
            or "none yet"
        )
        + ".",
    ]
    lines += [f"Not normalisable: {g} ({why})." for g, why in norm.unusable.items()]
    if not norm.scores:
        return [*lines, "", "No group has every game done yet."]
    table = []
    for key, x in norm.scores.items():
        point, lo, hi = report.stratified_bootstrap_ci(x, reps=BOOTSTRAP_REPS, seed=0)
        arm, width, sp = key
        table.append([arm, width, f"{sp:g}", f"{x.shape[0]} {X} {x.shape[1]}", f"{point:.3f}",
                      f"[{lo:.3f}, {hi:.3f}]", f"{x.mean():.3f}"])  # fmt: skip
        out["normalised"][_group_label(key)] = {
            "iqm": point, "ci95": [lo, hi], "mean": float(x.mean()), "runs": x.shape[0],
        }  # fmt: skip
    head = ["arm", "width", "sparsity", f"runs {X} games", "IQM", "95% CI", "mean"]
    return [*lines, "", *report.markdown_table(head, table)]


def summary_markdown(rows: Sequence[dict], games: Sequence[str] | None = None) -> tuple[str, dict]:
    """The ``summary.md`` text and the ``summary.json`` content."""
    lines, out = _header(rows)
    for g in _order(games, rows):
        table, out["games"][g] = _game_table(rows, g)
        lines += table
    norm = normalised_scores(rows, _order(games, rows))
    lines += _normalised_section(norm, out)
    if norm.incomplete:
        nothing = f"(no game has a {BASELINE_ARM} {X}{BASELINE_WIDTH} baseline yet)"
        parts = [
            f"{_group_label(k)} lacks {', '.join(v)}" if v else f"{_group_label(k)} {nothing}"
            for k, v in norm.incomplete.items()
        ]
        lines += ["", "Incomplete (left out of the table): " + "; ".join(parts) + "."]
    out["incomplete"] = {_group_label(k): v for k, v in norm.incomplete.items()}
    out["baselines"] = norm.baselines
    return "\n".join(lines) + "\n", out


def curve_stats(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Env steps, mean over seeds and 95% CI half-width of the per-interval mean return.

    Seeds without a finished episode in an interval (``None``) are left out of that interval's
    mean; intervals where no seed finished one are dropped, so that games with episodes longer
    than an interval (Freeway: 2500 steps) still draw a connected line.
    """
    length = min(len(r["curve"]["env_steps"]) for r in rows)
    x = np.asarray(rows[0]["curve"]["env_steps"][:length])
    y = np.asarray(
        [[np.nan if v is None else v for v in r["curve"]["mean_return"][:length]] for r in rows],
        np.float64,
    ).reshape(len(rows), length)
    keep = np.isfinite(y).any(axis=0)
    stats = [mean_ci(col[np.isfinite(col)]) for col in y[:, keep].T]
    mean = np.asarray([s[0] for s in stats], np.float64)
    ci = np.nan_to_num(np.asarray([s[1] for s in stats], np.float64))
    return x[keep], mean, ci


def plot_curves(rows: Sequence[dict], game: str, path: str) -> None:
    """Mean return against environment steps per arm × width × sparsity, a 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["game"] == game:
            groups.setdefault(_group_key(r), []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    widths = sorted({k[1] for k in groups})
    colours: dict[tuple, Any] = {}
    for key in sorted(groups, key=lambda k: (k[0].removesuffix(GAP) != "dense", k)):
        x, mean, ci = curve_stats(groups[key])
        colour_key = (key[0], key[2])
        line = ax.plot(
            x,
            mean,
            styles[widths.index(key[1]) % len(styles)],
            color=colours.get(colour_key),
            label=_group_label(key),
            lw=1.3,
        )[0]
        colours[colour_key] = line.get_color()
        ax.fill_between(x, mean - ci, mean + ci, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_title(f"{game} (DQN, mean ± 95% CI over seeds)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training return per surgery interval")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_profiles(norm: Normalised, path: str) -> None:
    """The performance profiles of the complete groups' normalised scores (rliable)."""
    top = max(float(x.max()) for x in norm.scores.values())
    taus = np.linspace(0.0, max(1.5, 1.05 * top), 61)
    scores = {_group_label(k): x for k, x in norm.scores.items()}
    profiles, bands = report.performance_profile(scores, taus, reps=BOOTSTRAP_REPS, seed=0)
    title = f"normalised final return (÷ {BASELINE_ARM} {X}{BASELINE_WIDTH}), runs {X} games"
    report.plot_performance_profile(profiles, bands, taus, path, title=title)


def write_report(workdir: str, rows: Sequence[dict], games: Sequence[str] | None = None) -> str:
    """Writes ``summary.md``, ``summary.json``, ``curves_<game>.png`` and ``profile.png`` of
    ``rows`` (the sweep's ``results.jsonl``) into ``workdir``; returns the markdown."""
    if not rows:
        path = os.path.join(workdir, "results.jsonl")
        text = f"# MinAtar sweep\n\nNo finished cell in {path} yet.\n"
        report.write_atomic(os.path.join(workdir, "summary.md"), text)
        return text
    text, data = summary_markdown(rows, games)
    report.write_atomic(os.path.join(workdir, "summary.md"), text)
    report.write_atomic(os.path.join(workdir, "summary.json"), json.dumps(data, indent=2) + "\n")
    for game in _order(games, rows):
        plot_curves(rows, game, os.path.join(workdir, f"curves_{game}.png"))
    norm = normalised_scores(rows, games)
    if norm.scores:
        plot_profiles(norm, os.path.join(workdir, "profile.png"))
    return text
