"""Masks in any accepted form -> the effective params and one bool mask tree.

Every export path (compaction, sparse encoding, checkpoints) starts here, so a mask tree, a
lifecycle state tree, a :class:`~emrakul.surgery.lifecycle.Lifecycle` and the wrapper's optimizer
state are all read the same way: kept = ``ALIVE``; sedated and lysed weights are dropped.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from emrakul._tree import PyTree, check_same_structure, is_floating, path_str
from emrakul.surgery.lifecycle import ALIVE, LYSED, Lifecycle, alive_mask
from emrakul.wrapper import EmrakulState, masked


def _find_emrakul_state(tree: Any) -> EmrakulState | None:
    """The one :class:`EmrakulState` inside ``tree`` (e.g. an optax chain's state), or None."""
    if isinstance(tree, EmrakulState):
        return tree
    if isinstance(tree, Lifecycle):
        return None
    found = [
        s
        for s in jax.tree_util.tree_leaves(tree, is_leaf=lambda s: isinstance(s, EmrakulState))
        if isinstance(s, EmrakulState)
    ]
    if len(found) > 1:
        raise ValueError(f"found {len(found)} Emrakul states in masks; pass exactly one")
    return found[0] if found else None


def _bool_leaves(masks: PyTree) -> list[np.ndarray]:
    """The mask leaves as numpy bool arrays: bool leaves as they are, int8 lifecycle states as
    ``state == ALIVE``; anything else raises."""
    leaves = [np.asarray(m) for m in jax.tree.leaves(masks)]
    kinds = {m.dtype for m in leaves}
    if kinds <= {np.dtype(bool)}:
        return leaves
    if kinds <= {np.dtype(np.int8)}:
        for m in leaves:
            if m.size and (m.min() < ALIVE or m.max() > LYSED):
                raise ValueError(
                    f"int8 masks are read as lifecycle states ({ALIVE}=alive ... {LYSED}=lysed); "
                    f"got values in [{m.min()}, {m.max()}]"
                )
        return [np.asarray(m) for m in jax.tree.leaves(alive_mask(masks))]
    raise ValueError(
        "masks must be a bool mask tree (scalar True for unpruned leaves) or an int8 "
        f"lifecycle state tree; got leaf dtypes {sorted(str(k) for k in kinds)}"
    )


def _masked_leaf(path: Any, p: Any, m: np.ndarray) -> tuple[Any, np.ndarray]:
    """One ``(effective param, mask)`` pair; a scalar mask must be the ``True`` marker."""
    if m.ndim == 0:
        if not bool(m):
            raise ValueError(
                f"scalar mask False for '{path_str(path)}': a scalar mask is the 'not pruned' "
                "marker and must be True; use a bool array of the param's shape to prune"
            )
        return p, np.bool_(True)
    if np.shape(m) != np.shape(p):
        raise ValueError(
            f"mask for '{path_str(path)}' has shape {np.shape(m)}, param has {np.shape(p)} "
            "(use the scalar True for a leaf that is not pruned)"
        )
    if not is_floating(p):
        raise ValueError(f"cannot mask non-floating leaf '{path_str(path)}'")
    pa = np.asarray(p)
    return np.where(m, pa, np.zeros((), pa.dtype)), m


def resolve_masks(params: PyTree, masks: Any) -> tuple[PyTree, PyTree]:
    """The effective (masked) params and a bool mask tree, from masks in any accepted form.

    Args:
      params: the dense parameters.
      masks: a bool mask tree, an ``int8`` lifecycle state tree (``ALIVE`` = kept), a
        :class:`~emrakul.surgery.lifecycle.Lifecycle`, or an optimizer state holding one
        :class:`~emrakul.wrapper.EmrakulState` (then the params are ``emrakul.masked``).

    Returns:
      ``(params with masked entries set to zero, mask tree)``; mask leaves are numpy bool arrays
      of the param's shape (pruned) or ``np.bool_(True)`` markers (not pruned).

    Raises:
      ValueError: structures differ, a pruned mask's shape differs from its param's, mask leaves
        are neither all bool nor all int8 lifecycle states, or a pruned param is not floating.
    """
    state = _find_emrakul_state(masks)
    if state is not None:
        params = masked(params, state)
        masks = state.life.state
    elif isinstance(masks, Lifecycle):
        masks = masks.state
    check_same_structure(params, masks, "params", "masks")
    leaves = _bool_leaves(masks)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    pairs = [_masked_leaf(path, p, m) for (path, p), m in zip(flat, leaves, strict=True)]
    return treedef.unflatten([p for p, _ in pairs]), treedef.unflatten([m for _, m in pairs])
