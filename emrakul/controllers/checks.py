"""Validation shared by the controller factories and their ``decide`` functions.

Hyperparameters are checked once, when a factory is called (static Python numbers, so a bad
value is named before anything compiles); observations are checked at trace time, by shape.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import check_same_structure
from emrakul.controllers.base import Observation
from emrakul.masks.tree import is_pruned


def check_unit(name: str, value: float, *, open_low: bool = False, open_high=False) -> float:
    """Validates a static fraction in [0, 1] (ends optionally open); returns it as a float.

    Raises:
      TypeError: ``value`` is not a number (a bool is not one).
      ValueError: ``value`` is not finite or lies outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    low_ok = v > 0 if open_low else v >= 0
    high_ok = v < 1 if open_high else v <= 1
    if not (math.isfinite(v) and low_ok and high_ok):
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must lie in {lo}0, 1{hi}, got {name}={value!r}")
    return v


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Validates a static, finite, positive (or non-negative) number; returns it as a float.

    Raises:
      ValueError: not such a number.
    """
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {name}={value!r}")
    return float(value)


def check_window(start: float, end: float) -> tuple[float, float]:
    """Validates a schedule window ``0 <= start <= end <= 1``; returns it as floats.

    Raises:
      TypeError / ValueError: as :func:`check_unit`, or ``end < start``.
    """
    start = check_unit("start", start)
    end = check_unit("end", end)
    if end < start:
        raise ValueError(f"need start <= end, got start={start}, end={end}")
    return start, end


def check_number(name: str, value: Any, *, low: float, low_open: bool, high=math.inf) -> float:
    """Validates a static finite number above ``low`` (open or closed) and at most ``high``.

    Raises:
      ValueError: not such a number (a bool is not a number).
    """
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high < math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}, got {name}={value!r}")
    return v


def pruned_count(obs: Observation, name: str) -> int:
    """Checks the observation's trees, target and run length; returns the number of pruned
    layers.

    Raises:
      ValueError: mismatched trees, a target that is not one sparsity per pruned layer, or a
        ``total_steps`` that is not a static positive int (``name`` prefixes the message).
    """
    check_same_structure(obs.params, obs.state, "observation.params", "observation.state")
    num = sum(1 for s in jax.tree.leaves(obs.state) if is_pruned(s))
    if jnp.shape(obs.target) != (num,):
        raise ValueError(
            f"{name}: observation.target must have shape ({num},) (one sparsity per pruned "
            f"layer), got {jnp.shape(obs.target)}"
        )
    if not isinstance(obs.total_steps, int | np.integer) or obs.total_steps < 1:
        raise ValueError(
            f"{name}: observation.total_steps must be a static positive Python int, got "
            f"{obs.total_steps!r}"
        )
    return num
