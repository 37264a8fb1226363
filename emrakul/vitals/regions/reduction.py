"""Per-region summaries: signal trees reduced per region into a fixed-shape feature matrix.

:func:`summarize` reduces named signal trees (``{'magnitude': ..., 'gsnr': ..., 'mask': ...}``)
per region of a :class:`~emrakul.vitals.regions.geometry.RegionLayout` into :class:`Regions`,
whose ``features`` are ``float32 [num_regions, num_features]`` with static shapes for a given
param tree, so the agent compiles once; :func:`layer_summary` averages them per layer.

Reductions are done per leaf with reshapes and axis reductions, then concatenated: on XLA:CPU
this is faster than ``jax.ops.segment_*`` over static segment ids of the concatenated weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree
from emrakul.masks.structures import Structure, Units, Unstructured
from emrakul.vitals.regions.geometry import RegionLayout, observed_leaves

_LOG_EPS = 1e-12

_OPS: dict[str, Callable[[jax.Array, Any], jax.Array]] = {
    "mean": lambda x, axes: jnp.mean(x, axis=axes),
    "max": lambda x, axes: jnp.max(x, axis=axes),
    "min": lambda x, axes: jnp.min(x, axis=axes),
    "std": lambda x, axes: jnp.std(x, axis=axes),
    "logmean": lambda x, axes: jnp.mean(jnp.log(jnp.abs(x) + _LOG_EPS), axis=axes),
    "sum": lambda x, axes: jnp.sum(x, axis=axes),
}
REDUCTIONS: tuple[str, ...] = tuple(_OPS)
"""The supported reductions; ``'logmean'`` is the mean of ``log(|x| + 1e-12)``."""


class Regions(NamedTuple):
    """Per-region features (a pytree; ``feature_names`` is static auxiliary data).

    Attributes:
      features: ``float32 [num_regions, num_features]``.
      layer_index: ``int32 [num_regions]``, the layer of each region.
      size: ``int32 [num_regions]``, the number of weights in each region.
      feature_names: ``('magnitude/mean', ...)``, one per column of ``features``.
    """

    features: jax.Array
    layer_index: jax.Array
    size: jax.Array
    feature_names: tuple[str, ...] = ()


jax.tree_util.register_pytree_with_keys(
    Regions,
    lambda r: (
        tuple((jax.tree_util.GetAttrKey(k), getattr(r, k)) for k in Regions._fields[:3]),
        r.feature_names,
    ),
    lambda names, children: Regions(*children, feature_names=names),
    lambda r: (tuple(r[:3]), r.feature_names),
)


def _reduce_leaf(x: jax.Array, structure: Structure, op: Callable) -> jax.Array:
    """Reduces one leaf to ``[count]`` with axis reductions (same numbering as region_ids)."""
    if isinstance(structure, Unstructured):
        return op(x, None).reshape(1)
    axis = structure.axis % x.ndim
    if isinstance(structure, Units):
        return op(x, tuple(i for i in range(x.ndim) if i != axis))
    shape, m = x.shape, structure.m
    x = x.reshape((*shape[:axis], shape[axis] // m, m, *shape[axis + 1 :]))
    return jnp.moveaxis(op(x, (axis + 1,)), axis, -1).reshape(-1)


def summarize(
    signals: Mapping[str, PyTree], layout: RegionLayout, reductions: Sequence[str] = ("mean",)
) -> Regions:
    """Reduces per-parameter signals per region into a fixed-shape feature matrix.

    Pure and jit / vmap friendly: ``layout`` is static, the output shapes depend on it alone.

    Args:
      signals: maps a feature name to a pytree shaped like the params (``None`` is allowed for
        leaves that are not observed). Booleans (masks) are cast to ``float32``.
      layout: from :func:`layout`.
      reductions: names from :data:`REDUCTIONS` applied to every signal.

    Returns:
      :class:`Regions` with ``features[:, j]`` the reduction ``feature_names[j]``; columns are
      ordered by signal name (sorted, as ``jax`` orders dict keys, so that eager and jitted
      calls agree) then by reduction in the given order, e.g. ``('gsnr/mean', 'gsnr/max',
      'magnitude/mean', 'magnitude/max')``.

    Raises:
      ValueError: for an unknown reduction, a signal tree whose structure differs from the
        params, or a signal leaf whose shape differs from its param.
    """
    if isinstance(reductions, str):
        reductions = (reductions,)
    reductions = tuple(reductions)
    for r in reductions:
        if r not in _OPS:
            raise ValueError(f"unknown reduction {r!r}; supported: {REDUCTIONS}")
    if len(set(reductions)) != len(reductions):
        raise ValueError(f"duplicate reductions in {reductions}")
    if not isinstance(signals, Mapping):
        raise TypeError(f"signals must map feature names to trees, got {type(signals).__name__}")
    columns, names = [], []
    for name in sorted(signals):
        leaves = observed_leaves(signals[name], layout, f"signals[{name!r}]")
        for r in reductions:
            parts = [
                _reduce_leaf(x, s, _OPS[r]) for x, s in zip(leaves, layout.structures, strict=True)
            ]
            columns.append(jnp.concatenate(parts) if parts else jnp.zeros((0,), jnp.float32))
            names.append(f"{name}/{r}")
    if columns:
        features = jnp.stack(columns, axis=1)
    else:
        features = jnp.zeros((layout.num_regions, 0), jnp.float32)
    return Regions(
        features=features,
        layer_index=jnp.asarray(layout.layer_index, jnp.int32),
        size=jnp.asarray(layout.region_size, jnp.int32),
        feature_names=tuple(names),
    )


def layer_summary(
    regions: Regions | jax.Array, layout: RegionLayout, weighted: bool = False
) -> jax.Array:
    """Averages region features per layer (segment mean over ``layer_index``).

    Args:
      regions: :class:`Regions` or an array ``[num_regions, ...]``.
      layout: the layout the regions come from.
      weighted: weight each region by its number of weights (then the layer value of a
        ``'mean'`` feature is the mean over the layer's weights).

    Returns:
      ``[num_layers, ...]`` (``[num_layers, num_features]`` for :class:`Regions`).
    """
    features = regions.features if isinstance(regions, Regions) else jnp.asarray(regions)
    if features.ndim < 1 or features.shape[0] != layout.num_regions:
        raise ValueError(
            f"expected {layout.num_regions} regions along axis 0, got shape {features.shape}"
        )
    weights = layout.region_size.astype(np.float32) if weighted else np.ones(layout.num_regions)
    weights = weights.astype(np.float32)
    denom = np.zeros(layout.num_layers, np.float32)
    np.add.at(denom, layout.layer_index, weights)
    expand = (-1,) + (1,) * (features.ndim - 1)
    total = jax.ops.segment_sum(
        features * weights.reshape(expand),
        layout.layer_index,
        num_segments=layout.num_layers,
        indices_are_sorted=True,
    )
    return total / np.maximum(denom, 1e-30).reshape(expand)
