"""The mean of a few seeds with its Student-t 95% confidence interval.

Result tables over a handful of seeds report a mean and a t interval, which rliable (whose
aggregates are bootstrapped over runs x tasks: :mod:`emrakul.lab.report`) does not compute; the
quantiles are tabulated so that this needs no scipy.
"""

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
