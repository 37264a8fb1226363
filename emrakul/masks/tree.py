"""Masks over whole parameter pytrees.

A mask tree has the params' structure. Every leaf is a bool array: a *pruned* leaf has the
param's shape; a leaf that is *not pruned* holds the scalar ``True`` (shape ``()``), an explicit
marker. There are no ``None`` leaves, so ``jax.tree.map`` over (params, masks) always works.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from emrakul._tree import (
    Filter,
    PyTree,
    check_same_structure,
    default_filter,
    is_floating,
    path_str,
)


def is_pruned(mask: jax.Array) -> bool:
    """Static: whether a mask leaf prunes its param (the scalar marker means it does not)."""
    return jnp.ndim(mask) > 0


def init(params: PyTree, filter: Filter | None = None) -> PyTree:
    """All-ones masks for the leaves ``filter(path, leaf)`` selects (default: floating arrays
    with ``ndim >= 2``, i.e. Dense/Conv kernels), the scalar ``True`` marker elsewhere.

    Raises:
      TypeError: the filter selected a non-floating leaf.
      ValueError: the filter selected a scalar leaf (nothing to prune).
    """
    filter = default_filter if filter is None else filter

    def one(path, leaf):
        if not filter(path, leaf):
            return jnp.ones((), bool)
        if not is_floating(leaf):
            raise TypeError(f"cannot prune '{path_str(path)}': dtype {jnp.result_type(leaf)}")
        if jnp.ndim(leaf) == 0:
            raise ValueError(f"cannot prune scalar leaf '{path_str(path)}'")
        return jnp.ones(jnp.shape(leaf), bool)

    return jax.tree_util.tree_map_with_path(one, params)


def _check(params: PyTree, masks: PyTree) -> None:
    check_same_structure(params, masks, "params", "masks")
    for (path, p), m in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(masks), strict=True
    ):
        if is_pruned(m) and jnp.shape(m) != jnp.shape(p):
            raise ValueError(
                f"mask for '{path_str(path)}' has shape {jnp.shape(m)}, param has "
                f"{jnp.shape(p)} (use shape () for a leaf that is not pruned)"
            )
        if is_pruned(m) and not is_floating(p):
            raise TypeError(f"cannot mask non-floating leaf '{path_str(path)}'")


def apply(params: PyTree, masks: PyTree) -> PyTree:
    """``params * masks`` for pruned leaves; unpruned leaves are returned unchanged.

    Raises:
      ValueError: structures differ, or a pruned mask's shape differs from its param's.
    """
    _check(params, masks)
    return jax.tree.map(
        lambda p, m: jnp.where(m, p, jnp.zeros((), p.dtype)) if is_pruned(m) else p, params, masks
    )


def sparsity(masks: PyTree, params: PyTree | None = None) -> jax.Array:
    """Fraction of zeros.

    Args:
      masks: a mask tree.
      params: if given, the fraction is over *all* parameters (unpruned leaves count as
        dense); otherwise over the pruned leaves only.

    Returns:
      A float32 scalar (0 when nothing is pruned).
    """
    if params is not None:
        _check(params, masks)
        sizes = [jnp.size(p) for p in jax.tree.leaves(params)]
    else:
        sizes = [jnp.size(m) if is_pruned(m) else 0 for m in jax.tree.leaves(masks)]
    kept = [
        jnp.sum(m, dtype=jnp.float32) if is_pruned(m) else jnp.float32(s)
        for m, s in zip(jax.tree.leaves(masks), sizes, strict=True)
    ]
    total = sum(sizes)
    if total == 0:
        return jnp.float32(0.0)
    return 1.0 - sum(kept) / total


def map_pruned(fn: Callable[..., jax.Array], masks: PyTree, *trees: PyTree) -> PyTree:
    """Applies ``fn(mask, *leaves)`` to pruned leaves; unpruned leaves keep their marker.

    Used to recompute masks leaf by leaf, e.g.
    ``map_pruned(lambda m, w: select(jnp.abs(w), Unstructured(), 0.9), masks, params)``.
    """
    for t in trees:
        check_same_structure(masks, t, "masks", "tree")
    return jax.tree.map(lambda m, *xs: fn(m, *xs) if is_pruned(m) else m, masks, *trees)
