"""Moving a fixed global budget between layers: allocation logits -> exact keep counts.

A run ends at a global target: ``K`` weights kept over all pruned layers. Where those ``K``
weights go is a choice (uniform, ERK, ... or a learned one). :func:`reallocate` takes the keep
counts of a base distribution (``base[l]``, e.g. what uniform or ERK keeps) and one logit per
layer, and returns integer counts proportional to ``base[l] * exp(logit[l])``, each within
``[min(floor, base[l]), n[l]]``, that sum to exactly ``K = sum(base)``: every allocation ends at
the same global sparsity. The capped proportional split is water-filling (layers at a bound
are fixed and the rest share what is left in proportion, as ERK's dense layers are in Evci et
al. 2020, "Rigging the Lottery"), the rounding is the largest-remainder method (Hamilton's
apportionment).

Zero logits return ``base`` exactly (the multipliers are exactly 1 in floating point), so a
controller whose neutral action has zero logits reproduces the base distribution bit for bit.
Counts are handled in float32: exact for layers of fewer than 2**24 weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from emrakul.masks.select import keep_count


def base_keep(target: jax.Array, sizes: Sequence[int]) -> jax.Array:
    """int32 ``[L]``: the weights the surgery keeps in each layer at sparsity ``target[l]``."""
    target = jnp.asarray(target, jnp.float32)
    return jnp.stack([keep_count(target[i], int(n)) for i, n in enumerate(sizes)]).astype(jnp.int32)


def _water_fill(weight, total, low, high):
    """Real ``r = clip(lam * weight, low, high)`` with ``sum(r) == total`` (where feasible).

    ``sum(clip(lam * w, low, high))`` is piecewise linear and non-decreasing in ``lam``, with
    breakpoints at ``low / w`` and ``high / w``: the segment holding ``total`` fixes which layers
    sit at a bound, and ``lam`` is solved on it in closed form (exactly 1 when nothing is
    clipped and ``weight`` sums to ``total``).
    """
    points = jnp.sort(jnp.concatenate([low / weight, high / weight]))
    filled = jnp.sum(jnp.clip(points[:, None] * weight, low, high), axis=1)
    k = jnp.maximum(jnp.sum(filled <= total) - 1, 0)  # the last breakpoint at or below total
    lo_pt, hi_pt = points[k], points[jnp.minimum(k + 1, points.shape[0] - 1)]
    at_high = high / weight <= lo_pt
    at_low = (low / weight >= hi_pt) & ~at_high
    free = ~(at_high | at_low)
    fixed = jnp.sum(jnp.where(at_high, high, 0.0)) + jnp.sum(jnp.where(at_low, low, 0.0))
    lam = (total - fixed) / jnp.maximum(jnp.sum(jnp.where(free, weight, 0.0)), 1e-30)
    return jnp.where(at_high, high, jnp.where(at_low, low, jnp.clip(lam * weight, low, high)))


def _largest_remainder(r, total, high):
    """Integers ``floor(r)`` plus one for the ``total - sum(floor(r))`` largest remainders
    (never above ``high``)."""
    fl = jnp.floor(r)
    deficit = total - jnp.sum(fl)
    room = fl < high
    rem = jnp.where(room, r - fl, -1.0)
    order = jnp.argsort(-rem, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    return fl + ((rank < deficit) & room).astype(fl.dtype)


def reallocate(
    base: jax.Array, logits: jax.Array, sizes: Sequence[int], floor: int = 1
) -> jax.Array:
    """Keep counts proportional to ``base * exp(logits)`` that sum to ``sum(base)``.

    Args:
      base: int ``[L]``, the base distribution's keep counts (``0 <= base[l] <= sizes[l]``).
      logits: float ``[L]``, the allocation logits (traced; 0 keeps ``base``).
      sizes: static, the number of weights of each layer.
      floor: the fewest weights a layer may keep (a layer whose base keeps fewer keeps its base).

    Returns:
      int32 ``[L]``, each in ``[min(floor, base[l]), sizes[l]]``, summing to ``sum(base)``.
    """
    num = len(sizes)
    base_f = jnp.asarray(base, jnp.float32).reshape((num,))
    logits = jnp.asarray(logits, jnp.float32).reshape((num,))
    high = jnp.asarray([float(n) for n in sizes], jnp.float32)
    low = jnp.minimum(base_f, jnp.float32(floor))
    total = jnp.sum(base_f)
    weight = base_f * jnp.exp(jnp.clip(logits, -30.0, 30.0))
    weight = jnp.maximum(weight, 1e-30 * jnp.maximum(total, 1.0))
    r = _water_fill(weight, total, low, high)
    return _largest_remainder(r, total, high).astype(jnp.int32)


def sparsity_of(
    keep: jax.Array, base: jax.Array, target: jax.Array, sizes: Sequence[int]
) -> jax.Array:
    """float32 ``[L]``: the sparsity whose :func:`~emrakul.masks.select.keep_count` is ``keep``;
    ``target[l]`` itself where ``keep[l] == base[l]`` (so an unchanged layer schedules exactly
    as the base distribution does)."""
    n = jnp.asarray([float(s) for s in sizes], jnp.float32)
    own = (n - jnp.asarray(keep, jnp.float32)) / n
    return jnp.where(jnp.asarray(keep) == jnp.asarray(base), jnp.asarray(target, jnp.float32), own)
