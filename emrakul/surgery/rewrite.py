"""Rewrites of the weights themselves: re-initialisation, shrinking and perturbation.

The continual-learning remedies for loss of plasticity change weights rather than masks:
continual backprop (Dohare et al. 2024, "Loss of plasticity in deep continual learning",
Nature 632) and ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement
Learning") re-initialise a unit's incoming weights and zero its outgoing ones; Shrink & Perturb
(Ash & Adams 2020, "On Warm-Starting Neural Network Training") scales every weight down and adds
noise. A controller asks for any of them with one :class:`Rewrite` in its decision,

    theta' = keep * theta + add,

applied after the surgery's mask changes, with the inner optimizer's moments restarted where
``reset`` is set (a re-initialised weight should not inherit the old one's momentum). Lysed
weights stay zero whatever a rewrite says: removal for good is never undone by a remedy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree, check_same_structure
from emrakul.surgery.lifecycle import LYSED


class Rewrite(NamedTuple):
    """``theta' = keep * theta + add`` per weight, moments restarted where ``reset``.

    Every field is a tree with the params' structure; a leaf is an array broadcastable to the
    param's shape (a scalar leaves a whole leaf alone: ``1.0``, ``0.0`` and ``False``).

    Attributes:
      keep: float multipliers.
      add: float values added after the multiplication.
      reset: bool, restart the inner optimizer's per-weight state there.
    """

    keep: PyTree
    add: PyTree
    reset: PyTree


def identity(params: PyTree) -> Rewrite:
    """The rewrite that changes nothing (scalar placeholders on every leaf)."""
    return Rewrite(
        keep=jax.tree.map(lambda _: jnp.float32(1.0), params),
        add=jax.tree.map(lambda _: jnp.float32(0.0), params),
        reset=jax.tree.map(lambda _: jnp.zeros((), bool), params),
    )


def check_rewrite(params: PyTree, rewrite: Rewrite) -> None:
    """Raises ``ValueError`` when a field's structure or a leaf's shape does not fit ``params``
    (the message names the field and the leaf)."""
    if not isinstance(rewrite, Rewrite):
        raise ValueError(f"decision.rewrite must be an emrakul Rewrite, got {type(rewrite)}")
    for field in Rewrite._fields:
        tree = getattr(rewrite, field)
        check_same_structure(params, tree, "params", f"rewrite.{field}")
        for (path, p), r in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(tree), strict=True
        ):
            try:
                jnp.broadcast_shapes(jnp.shape(r), jnp.shape(p))
            except ValueError as e:
                raise ValueError(
                    f"rewrite.{field} at {jax.tree_util.keystr(path)} has shape {jnp.shape(r)}, "
                    f"not broadcastable to the param's {jnp.shape(p)}"
                ) from e


def apply_rewrite(params: PyTree, life_state: PyTree, rewrite: Rewrite) -> PyTree:
    """``keep * theta + add`` on every leaf, lysed weights kept at zero.

    Args:
      params: the dense weights.
      life_state: the lifecycle tree (int8 arrays on pruned leaves, scalar markers elsewhere).
      rewrite: the :class:`Rewrite`.

    Returns:
      The rewritten params (same dtypes).
    """
    check_rewrite(params, rewrite)

    def one(p, s, keep, add):
        new = (keep * p + add).astype(p.dtype)
        if jnp.ndim(s):
            new = jnp.where(s == LYSED, jnp.zeros((), p.dtype), new)
        return new

    return jax.tree.map(one, params, life_state, rewrite.keep, rewrite.add)


def merge_resets(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a | b`` of two reset trees (scalar ``False`` markers broadcast)."""
    return jax.tree.map(jnp.logical_or, a, b)
