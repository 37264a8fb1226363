"""One entry point from (scores, structure, budget) to a mask.

Later code (surgery, controllers, the agent) calls :func:`select` and never branches on the
structure itself. The budget is a *sparsity* (fraction of weights, groups or units removed),
a traced float: changing it does not recompile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.masks.nm import nm_mask
from emrakul.masks.structures import NM, Structure, Units, Unstructured, check_structure
from emrakul.masks.topk import topk_mask


def check_sparsity(sparsity) -> jax.Array:
    """Validates a concrete sparsity (ValueError outside [0, 1]); clips a traced one."""
    if not isinstance(sparsity, jax.core.Tracer):
        s = np.asarray(sparsity, dtype=np.float64)
        if s.size and (np.isnan(s).any() or s.min() < 0 or s.max() > 1):
            raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    return jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0)


def keep_count(sparsity, total: int) -> jax.Array:
    """Entries kept out of ``total`` at ``sparsity``: ``total - round(sparsity * total)``."""
    s = check_sparsity(sparsity)
    return (total - jnp.round(s * total)).astype(jnp.int32)


def unit_scores(scores: jax.Array, axis: int) -> jax.Array:
    """Sums ``scores`` over every axis but ``axis``: one score per unit/channel."""
    axis = axis % scores.ndim
    others = tuple(a for a in range(scores.ndim) if a != axis)
    return jnp.sum(scores.astype(jnp.float32), axis=others)


def select(scores: jax.Array, structure: Structure, sparsity) -> jax.Array:
    """The mask of ``structure`` that keeps the highest ``scores`` at the given ``sparsity``.

    * ``Unstructured()``: the ``n - round(sparsity * n)`` largest scores (:func:`topk_mask`).
    * ``NM(n, m, axis)``: the ``n`` largest of every ``m`` (:func:`nm_mask`); with ``n=None``,
      ``n = m - round(sparsity * m)``, otherwise ``sparsity`` is ignored (the structure fixes
      it at ``1 - n / m``).
    * ``Units(axis)``: whole units along ``axis`` ranked by their summed score; the
      ``U - round(sparsity * U)`` best units are kept.

    Args:
      scores: floating array (higher = more important), e.g. ``|w|`` or ``|w * g|``.
      structure: one of the structure NamedTuples.
      sparsity: fraction removed, in [0, 1] (may be traced).

    Returns:
      A bool mask of ``scores.shape``.
    """
    check_structure(structure)
    scores = jnp.asarray(scores)
    if isinstance(structure, Unstructured):
        return topk_mask(scores, keep_count(sparsity, scores.size))
    if isinstance(structure, NM):
        n = keep_count(sparsity, structure.m) if structure.n is None else structure.n
        return nm_mask(scores, n, structure.m, structure.axis)
    assert isinstance(structure, Units)
    if scores.ndim == 0:
        raise ValueError("Units structure needs scores with at least one dimension")
    axis = structure.axis % scores.ndim
    per_unit = unit_scores(scores, axis)
    keep = topk_mask(per_unit, keep_count(sparsity, per_unit.size))
    shape = [1] * scores.ndim
    shape[axis] = per_unit.size
    return jnp.broadcast_to(keep.reshape(shape), scores.shape)
