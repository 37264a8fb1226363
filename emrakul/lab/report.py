"""Reporting: aggregate scores with intervals, markdown tables and plots.

The aggregates over runs x tasks follow Agarwal et al. 2021, "Deep Reinforcement Learning at
the Edge of the Statistical Precipice" (NeurIPS), through its library, rliable: the
interquartile mean, percentile stratified-bootstrap confidence intervals (runs resampled within
each task) and performance profiles (the fraction of runs scoring above each threshold, with
bootstrap bands). rliable (and the arch, pandas, seaborn it brings) is imported on first use,
so importing this module stays cheap. A mean with a Student-t interval over seeds is
:func:`emrakul.lab.stats.mean_ci`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seeds numpy's global generator for the block, then restores it (rliable's stratified
    bootstrap draws its indices from it)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm(scores: np.ndarray | Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores pooled (runs x tasks).

    rliable's ``aggregate_iqm`` (``scipy.stats.trim_mean(x, 0.25)``): sort, drop
    ``floor(0.25 n)`` scores at each end, average the rest. Robust to outlying runs and more
    efficient than the median (Agarwal et al. 2021).

    Raises:
      ValueError: no scores, or non-finite scores.
    """
    from rliable import metrics

    x = np.asarray(scores, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("iqm needs at least one score")
    if not np.isfinite(x).all():
        raise ValueError("iqm got non-finite scores")
    return float(metrics.aggregate_iqm(x))


def _check_scores(scores: Any) -> np.ndarray:
    x = np.asarray(scores, np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"scores must be [runs, tasks] with runs, tasks >= 1; got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite")
    return x


def _check_bootstrap(reps: int, confidence: float) -> None:
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """A statistic of ``scores`` and its percentile stratified-bootstrap confidence interval.

    Each replicate resamples the runs with replacement *within each task*, so the interval
    measures the uncertainty of repeating the runs on the same tasks (rliable's
    ``StratifiedBootstrap``; Agarwal et al. 2021).

    Args:
      scores: float ``[runs, tasks]`` (one column per game / environment).
      statistic: a function of a ``[runs, tasks]`` array (default: :func:`iqm`).
      reps: number of bootstrap replicates.
      confidence: the interval's coverage (percentile interval).
      seed: the resampling seed (the same seed gives the same interval).

    Returns:
      ``(point, low, high)``.

    Raises:
      ValueError: ``scores`` not 2-D with at least one run and task, non-finite values, or a
        bad ``reps`` / ``confidence``.
    """
    from rliable import library

    x = _check_scores(scores)
    _check_bootstrap(reps, confidence)

    def func(s: np.ndarray) -> np.ndarray:
        return np.asarray([statistic(s)], np.float64)

    with _numpy_seed(seed):
        boot = library.StratifiedBootstrap(x)
        low, high = boot.conf_int(func, reps=reps, size=confidence, method="percentile")[:, 0]
    return float(statistic(x)), float(low), float(high)


def _score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """The fraction of all runs x tasks scoring above each tau: rliable's run-score
    distribution, vectorised over the taus (its own loops over them in Python)."""
    return (np.reshape(scores, (-1, 1)) > np.reshape(taus, (1, -1))).mean(axis=0)


def performance_profile(
    scores: Mapping[str, np.ndarray],
    taus: Sequence[float] | np.ndarray,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score distributions: per group, the fraction of runs x tasks scoring above each tau.

    rliable's ``create_performance_profile`` with stratified-bootstrap bands (Agarwal et al.
    2021): a profile shows the whole distribution of normalised scores, so two groups with the
    same IQM but different tails can be told apart.

    Args:
      scores: group name -> float ``[runs, tasks]``.
      taus: the thresholds.
      reps: bootstrap replicates of the bands.
      confidence: the bands' coverage.
      seed: the resampling seed.

    Returns:
      ``(profiles, bands)``: name -> ``[len(taus)]``, and name -> ``[2, len(taus)]`` (low, high).

    Raises:
      ValueError: no groups, a group's scores not finite ``[runs, tasks]``, no taus, or a bad
        ``reps`` / ``confidence``.
    """
    from rliable import library

    if not scores:
        raise ValueError("performance_profile needs at least one group")
    checked = {k: _check_scores(v) for k, v in scores.items()}
    tau = np.asarray(taus, np.float64).reshape(-1)
    if tau.size == 0 or not np.isfinite(tau).all():
        raise ValueError("taus must be a non-empty list of finite thresholds")
    _check_bootstrap(reps, confidence)
    with _numpy_seed(seed):
        profiles, bands = library.create_performance_profile(
            checked,
            tau,
            custom_profile_func=_score_distribution,
            reps=reps,
            confidence_interval_size=confidence,
        )
    return {k: np.asarray(v) for k, v in profiles.items()}, {
        k: np.asarray(v) for k, v in bands.items()
    }


def plot_performance_profile(
    profiles: Mapping[str, np.ndarray],
    bands: Mapping[str, np.ndarray],
    taus: Sequence[float] | np.ndarray,
    path: str,
    *,
    title: str = "",
) -> None:
    """Draws :func:`performance_profile`'s curves with their bands into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        dict(profiles),
        np.asarray(taus),
        performance_profile_cis=dict(bands),
        ax=ax,
        xlabel=r"normalised score ($\tau$)",
        ylabel=r"fraction of runs with score $> \tau$",
    )
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt_ci(mean: float, half: float, digits: int = 2) -> str:
    """``mean ± half`` (``mean`` alone without an interval; ``n/a`` without a mean)."""
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table with header ``head`` (cells formatted with ``str``)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, so readers never see half of it."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
