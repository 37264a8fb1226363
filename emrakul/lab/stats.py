"""Small statistics for result tables: mean and a Student-t 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= 30 else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (t-based; NaN for one value)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(t975(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def iqm(scores: np.ndarray | Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores pooled (runs x tasks).

    As ``scipy.stats.trim_mean(x, 0.25)`` (the aggregate of Agarwal et al. 2021, "Deep
    Reinforcement Learning at the Edge of the Statistical Precipice", NeurIPS): sort, drop
    ``floor(0.25 n)`` scores at each end, average the rest.

    Raises:
      ValueError: no scores, or non-finite scores.
    """
    x = np.sort(np.asarray(scores, np.float64).reshape(-1))
    if x.size == 0:
        raise ValueError("iqm needs at least one score")
    if not np.isfinite(x).all():
        raise ValueError("iqm got non-finite scores")
    cut = int(0.25 * x.size)
    return float(x[cut : x.size - cut].mean())


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic=iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """A statistic of ``scores`` and its percentile stratified-bootstrap confidence interval.

    ``scores`` is ``[runs, tasks]``; each bootstrap replicate resamples the runs with
    replacement *within each task* (stratified by task, as rliable does: Agarwal et al. 2021),
    then applies ``statistic`` to the ``[runs, tasks]`` replicate.

    Args:
      scores: float ``[runs, tasks]`` (one column per game / environment).
      statistic: a function of a ``[runs, tasks]`` array (default: :func:`iqm`).
      reps: number of bootstrap replicates.
      confidence: the interval's coverage (percentile interval).
      seed: the resampling seed.

    Returns:
      ``(point, low, high)``.

    Raises:
      ValueError: ``scores`` not 2-D with at least one run and task, non-finite values, or a
        bad ``reps`` / ``confidence``.
    """
    x = np.asarray(scores, np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"scores must be [runs, tasks] with runs, tasks >= 1; got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    runs, tasks = x.shape
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    reps_x = np.take_along_axis(x[None], idx, axis=1)
    values = np.asarray([statistic(r) for r in reps_x])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(statistic(x)), float(low), float(high)
