"""Per-region values mapped back onto every weight of the observed leaves.

The inverse of the per-region reductions of :mod:`emrakul.vitals.regions.reduction`: a decision
or a score made per region (a unit, a block, a layer) becomes a params-shaped tree.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.masks.structures import Structure, Units, Unstructured
from emrakul.vitals.regions.geometry import RegionLayout, flatten_like, leaf_shape


def _expand(v: jax.Array, shape: tuple[int, ...], structure: Structure) -> jax.Array:
    """Inverse of :func:`_reduce_leaf`: ``[count, *T]`` to ``shape + T``."""
    trailing, ndim = v.shape[1:], len(shape)
    if isinstance(structure, Unstructured):
        return jnp.broadcast_to(v.reshape((1,) * ndim + trailing), shape + trailing)
    axis = structure.axis % ndim
    if isinstance(structure, Units):
        v = v.reshape((1,) * axis + (shape[axis],) + (1,) * (ndim - axis - 1) + trailing)
        return jnp.broadcast_to(v, shape + trailing)
    m, blocks = structure.m, shape[axis] // structure.m
    rest = shape[:axis] + shape[axis + 1 :]
    v = jnp.broadcast_to(v.reshape((*rest, blocks, 1, *trailing)), (*rest, blocks, m, *trailing))
    return jnp.moveaxis(v.reshape((*rest, shape[axis], *trailing)), ndim - 1, axis)


def broadcast(
    values: jax.Array, layout: RegionLayout, like: PyTree | None = None, fill: Any = 0
) -> PyTree:
    """Maps per-region values back onto every weight of the observed leaves.

    Args:
      values: ``[num_regions]`` or ``[num_regions, *T]``.
      layout: the layout the regions come from.
      like: optional params-shaped tree; when given, its structure and shapes are checked.
      fill: the value of the unobserved leaves.

    Returns:
      A pytree shaped like the params whose leaves have shape ``param.shape + T`` and the dtype
      of ``values``; a weight of an observed leaf gets the value of its region.
    """
    values = jnp.asarray(values)
    if values.ndim < 1 or values.shape[0] != layout.num_regions:
        raise ValueError(
            f"expected {layout.num_regions} regions along axis 0, got shape {values.shape}"
        )
    if like is not None:
        for i, x in enumerate(flatten_like(like, layout, "like")):
            if x is not None and leaf_shape(x) != layout.leaf_shapes[i]:
                raise ValueError(
                    f"like leaf '{layout.leaf_paths[i]}' has shape {leaf_shape(x)}, but the layout "
                    f"has {layout.leaf_shapes[i]}"
                )
    trailing = values.shape[1:]
    out = [jnp.full(shape + trailing, fill, values.dtype) for shape in layout.leaf_shapes]
    for k, i in enumerate(layout.observed):
        v = values[layout.offsets[k] : layout.offsets[k] + layout.counts[k]]
        out[i] = _expand(v, layout.leaf_shapes[i], layout.structures[k])
    return jax.tree_util.tree_unflatten(layout.treedef, out)
