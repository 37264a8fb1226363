"""Checks of the parameters against the settings, run by ``init`` before anything is traced.

Every structure, budget and filter error is raised here, by ``tx.init``, and names the leaf by
its path (``Dense_0/kernel``, as :func:`emrakul._tree.path_str` writes it), so that a bad
setting fails where it is made instead of inside the first compiled ``update``.
:func:`leaf_structures` is also the check a configuration system can run on parameter shapes
(``jax.eval_shape`` of the model's ``init``) before it builds anything.
"""

from __future__ import annotations

import jax
import numpy as np

from emrakul import masks as msk
from emrakul._tree import Filter, PyTree, leaf_paths, path_str
from emrakul.masks.structures import Structure, Unstructured, check_fits, check_structure
from emrakul.surgery import budgets
from emrakul.wrapper.settings import StructureChoice


def _structure_of(structure: StructureChoice, path: tuple, leaf) -> Structure:
    """The structure of one pruned leaf, checked; errors name the leaf's path."""
    st = structure(path, leaf) if callable(structure) else structure
    try:
        check_structure(st)
    except (TypeError, ValueError) as e:
        raise type(e)(f"structure of pruned leaf '{path_str(path)}': {e}") from e
    return st


def leaf_structures(
    params: PyTree,
    mask_tree: PyTree,
    structure: StructureChoice = Unstructured(),  # noqa: B008 (immutable NamedTuple)
    *,
    check_fit: bool = True,
) -> tuple[Structure, ...]:
    """One structure per pruned leaf, in flattening order.

    Args:
      params: the parameters (arrays, tracers or ``jax.ShapeDtypeStruct``).
      mask_tree: the mask or lifecycle-state tree saying which leaves are pruned (pruned leaves
        have ``ndim > 0``).
      structure: one structure for every pruned leaf, or a ``(path, leaf) -> structure``.
      check_fit: also check that every structure fits its leaf's shape
        (:func:`emrakul.masks.structures.check_fits`).

    Returns:
      A static tuple of structures, one per pruned leaf.

    Raises:
      TypeError / ValueError: a non-structure, an invalid structure, or one that does not fit
        its leaf; the message names the leaf's path.
    """
    out = []
    for (path, leaf), m in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask_tree), strict=True
    ):
        if not msk.is_pruned(m):
            continue
        st = _structure_of(structure, path, leaf)
        if check_fit:
            check_fits(st, np.shape(leaf), f"pruned leaf '{path_str(path)}'")
        out.append(st)
    return tuple(out)


def pruned_masks(params: PyTree, filter: Filter | None) -> PyTree:
    """The all-ones mask tree of the leaves ``filter`` selects (:func:`emrakul.masks.init`).

    Raises:
      TypeError: the filter selected a non-floating leaf (named).
      ValueError: the filter selected a scalar leaf (named), or no leaf at all.
    """
    mask_tree = msk.init(params, filter)
    if not any(msk.is_pruned(m) for m in jax.tree.leaves(mask_tree)):
        paths = leaf_paths(params)
        shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
        raise ValueError(f"the filter selected no leaf to prune among the leaves [{shown}]")
    return mask_tree


def layer_targets(
    params: PyTree, mask_tree: PyTree, sparsity: float, distribution: str
) -> np.ndarray:
    """The per-layer target sparsities of the pruned leaves (:func:`budgets.layer_sparsities`).

    Raises:
      ValueError: a budget the distribution rejects, naming the pruned leaf at fault.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    pruned = [
        (path_str(p), np.shape(m))
        for (p, _), m in zip(flat, jax.tree.leaves(mask_tree), strict=True)
        if msk.is_pruned(m)
    ]
    names = [name for name, _ in pruned]
    shapes = [shape for _, shape in pruned]
    return budgets.layer_sparsities(shapes, float(sparsity), distribution, names=names)


def check_structure_fits(
    params: PyTree,
    structure: StructureChoice = Unstructured(),  # noqa: B008 (immutable NamedTuple)
    filter: Filter | None = None,
) -> tuple[Structure, ...]:
    """Checks that ``filter`` selects prunable leaves of ``params`` and that ``structure``
    fits every one of them, as ``tx.init`` does; the same errors, named by path.

    Args:
      params: the parameters, or their shapes (a tree of ``jax.ShapeDtypeStruct``).
      structure: a structure or a ``(path, leaf) -> structure``.
      filter: the pruning filter (``None``: the default filter).

    Returns:
      The structures of the pruned leaves, in flattening order.
    """
    return leaf_structures(params, pruned_masks(params, filter), structure)
