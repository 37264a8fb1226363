"""The static region layout of a param tree: which leaves are observed, and their regions.

A region is a group of weights observed and acted on together; its kind reuses the sparsity
structures of :mod:`emrakul.masks.structures` (a whole leaf, one unit or channel, one N:M
block). :func:`layout` builds a :class:`RegionLayout` from shapes alone; it is hashable and a
pytree without leaves, so ``jax.jit`` treats it as a constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import Filter, PyTree, check_same_structure, path_str, select_leaves
from emrakul.masks.structures import NM, Structure, Units, Unstructured, check_structure


class RegionLayout(NamedTuple):
    """Static description of the regions of a param tree (built from shapes only).

    Attributes:
      treedef: the params' ``PyTreeDef``.
      leaf_paths: ``path_str`` of every params leaf, in flattening order.
      leaf_shapes: shape of every params leaf.
      observed: indices (into the flattened params) of the observed leaves (the layers).
      structures: the region structure of each observed leaf.
      counts: number of regions of each observed leaf.
      offsets: index of the first region of each observed leaf.
      num_regions: total number of regions.
      layer_index: ``int32 [num_regions]``, the layer (observed-leaf number) of each region.
      region_size: ``int32 [num_regions]``, the number of weights in each region.
      layer_names: ``path_str`` of each observed leaf.
    """

    treedef: Any
    leaf_paths: tuple[str, ...]
    leaf_shapes: tuple[tuple[int, ...], ...]
    observed: tuple[int, ...]
    structures: tuple[Structure, ...]
    counts: tuple[int, ...]
    offsets: tuple[int, ...]
    num_regions: int
    layer_index: np.ndarray
    region_size: np.ndarray
    layer_names: tuple[str, ...]

    @property
    def num_layers(self) -> int:
        """The number of observed leaves."""
        return len(self.observed)

    def _key(self) -> tuple:
        # The numpy fields are derived from the others, so they are left out of hash / eq.
        return tuple(self[:8])

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegionLayout) and self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        return not self == other


# A layout is static: a pytree node without leaves, so jit treats it as a (hashable) constant.
jax.tree_util.register_pytree_node(RegionLayout, lambda lay: ((), lay), lambda lay, _: lay)


def leaf_shape(x: Any) -> tuple[int, ...]:
    """The shape of an array, a ``jax.ShapeDtypeStruct`` or anything ``np.shape`` accepts."""
    return tuple(int(d) for d in (x.shape if hasattr(x, "shape") else np.shape(x)))


def _axis(shape: tuple[int, ...], structure: Units | NM, where: str) -> int:
    ndim = len(shape)
    if not -ndim <= structure.axis < ndim:
        raise ValueError(
            f"{where}: {structure!r} has axis {structure.axis}, out of range for shape {shape}"
        )
    return structure.axis % ndim


def _geometry(shape: tuple[int, ...], structure: Structure, where: str) -> tuple[int, int]:
    """(number of regions, weights per region); raises for a structure that does not fit."""
    check_structure(structure)
    size = math.prod(shape)
    if isinstance(structure, Unstructured):
        return 1, size
    length = shape[_axis(shape, structure, where)]
    if isinstance(structure, Units):
        return length, size // length if length else 0
    if length % structure.m:
        raise ValueError(
            f"{where}: NM(m={structure.m}) needs the length {length} of axis {structure.axis} "
            f"(shape {shape}) to be divisible by m={structure.m}"
        )
    return size // structure.m, structure.m


def num_regions(shape: Sequence[int], structure: Structure) -> int:
    """The number of regions a leaf of ``shape`` has under ``structure``."""
    return _geometry(tuple(shape), structure, f"shape {tuple(shape)}")[0]


def region_ids(shape: Sequence[int], structure: Structure) -> np.ndarray:
    """``int32`` array of ``shape``: the region (numbered within the leaf) of every weight."""
    shape = tuple(int(d) for d in shape)
    count, _ = _geometry(shape, structure, f"shape {shape}")
    if isinstance(structure, Unstructured):
        return np.zeros(shape, np.int32)
    axis = _axis(shape, structure, "")
    if isinstance(structure, Units):
        ids = np.arange(count, dtype=np.int32).reshape(
            (1,) * axis + (count,) + (1,) * (len(shape) - axis - 1)
        )
        return np.ascontiguousarray(np.broadcast_to(ids, shape))
    rest = shape[:axis] + shape[axis + 1 :]
    ids = np.arange(count, dtype=np.int32).reshape((*rest, shape[axis] // structure.m))
    ids = np.repeat(ids, structure.m, axis=-1)
    return np.ascontiguousarray(np.moveaxis(ids, -1, axis))


def _is_structure_leaf(x: Any) -> bool:
    return x is None or isinstance(x, Unstructured | NM | Units)


def _structures_per_leaf(params: PyTree, treedef: Any, structure: Any) -> list:
    s_leaves, s_def = jax.tree_util.tree_flatten(structure, is_leaf=_is_structure_leaf)
    if jax.tree_util.treedef_is_leaf(s_def):  # one structure for every selected leaf
        check_structure(structure)
        return [structure] * treedef.num_leaves
    if s_def != treedef:  # a prefix of params: a structure (or None) for a whole subtree
        try:
            subtrees = s_def.flatten_up_to(params)
        except (ValueError, TypeError):
            check_same_structure(
                params,
                jax.tree_util.tree_unflatten(s_def, [0] * len(s_leaves)),
                "params",
                "structure",
            )
            raise
        s_leaves = [
            s
            for s, sub in zip(s_leaves, subtrees, strict=True)
            for _ in jax.tree_util.tree_leaves(sub)
        ]
    for s in s_leaves:
        if s is not None:
            check_structure(s)
    return s_leaves


def layout(
    params: PyTree,
    structure: Structure | PyTree = Unstructured(),  # noqa: B008 (immutable NamedTuple)
    filter: Filter | None = None,
) -> RegionLayout:
    """Builds the static region layout of a param tree.

    Args:
      params: the params (arrays or ``jax.ShapeDtypeStruct``; only shapes are used).
      structure: one structure for every observed leaf, or a pytree of structures matching
        ``params`` (or a prefix of it, one entry for a whole subtree), where ``None`` marks
        leaves as not observed.
      filter: ``filter(path, leaf) -> bool`` choosing the candidate leaves;
        ``default_filter`` (floating, ndim >= 2) by default. A leaf is observed when the
        filter selects it and its structure is not ``None``.

    Returns:
      The :class:`RegionLayout`.

    Raises:
      TypeError: for an unknown structure.
      ValueError: for a structure tree that does not match ``params``, or a structure that does
        not fit a leaf (axis out of range, ``NM`` group size not dividing the axis).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = tuple(path_str(p) for p, _ in flat)
    shapes = tuple(leaf_shape(x) for _, x in flat)
    selected = treedef.flatten_up_to(select_leaves(params, filter))
    per_leaf = _structures_per_leaf(params, treedef, structure)
    observed, structs, counts, offsets, layer_index, sizes = [], [], [], [], [], []
    offset = 0
    for i, (path, shape, sel, s) in enumerate(zip(paths, shapes, selected, per_leaf, strict=True)):
        if not sel or s is None:
            continue
        count, size = _geometry(shape, s, f"leaf '{path}'")
        layer_index.append(np.full(count, len(observed), np.int32))
        sizes.append(np.full(count, size, np.int32))
        observed.append(i)
        structs.append(s)
        counts.append(count)
        offsets.append(offset)
        offset += count
    layer_index_arr = np.concatenate(layer_index) if layer_index else np.zeros(0, np.int32)
    sizes_arr = np.concatenate(sizes) if sizes else np.zeros(0, np.int32)
    layer_index_arr.flags.writeable = False
    sizes_arr.flags.writeable = False
    return RegionLayout(
        treedef=treedef,
        leaf_paths=paths,
        leaf_shapes=shapes,
        observed=tuple(observed),
        structures=tuple(structs),
        counts=tuple(counts),
        offsets=tuple(offsets),
        num_regions=offset,
        layer_index=layer_index_arr,
        region_size=sizes_arr,
        layer_names=tuple(paths[i] for i in observed),
    )


def _reference(lay: RegionLayout) -> PyTree:
    leaves = [jax.ShapeDtypeStruct(s, jnp.float32) for s in lay.leaf_shapes]
    return jax.tree_util.tree_unflatten(lay.treedef, leaves)


def flatten_like(tree: PyTree, lay: RegionLayout, what: str) -> list:
    """The leaves of ``tree`` in params order; ``None`` is allowed in place of any leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef == lay.treedef:
        return leaves
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is None)
    if treedef == lay.treedef:
        return leaves
    check_same_structure(_reference(lay), tree, "params", what)
    raise ValueError(f"{what} must have the same pytree structure as params")


def observed_leaves(tree: PyTree, lay: RegionLayout, what: str) -> list[jax.Array]:
    """The observed leaves of a params-shaped ``tree`` as float32, in layout order.

    Raises:
      ValueError: a structure that differs from the params, or an observed leaf that is
        ``None`` or has another shape than its param (``what`` names the tree).
    """
    leaves = flatten_like(tree, lay, what)
    out = []
    for i in lay.observed:
        x, path, shape = leaves[i], lay.leaf_paths[i], lay.leaf_shapes[i]
        if x is None:
            raise ValueError(f"{what} has no value (None) for the observed leaf '{path}'")
        if leaf_shape(x) != shape:
            raise ValueError(
                f"{what} leaf '{path}' has shape {leaf_shape(x)}, but the param has shape {shape}"
            )
        out.append(jnp.asarray(x).astype(jnp.float32))
    return out
