"""Gradient routing and update finishing: what the lifecycle does to a step's gradients.

``masked`` is straight-through, so ``grads`` is the dense gradient with respect to the
effective weights. Before the inner optimizer sees it, :func:`route_gradients` applies the
chain rule through the gates for alive weights, keeps the full gradient for sedated weights
(they keep learning, "virtual" gradients) and zeroes it for lysed ones. After the inner
optimizer, :func:`finish_updates` freezes lysed weights, multiplies each pruned layer's update
by its anesthesia learning-rate multiplier, and adds the change the surgery made to the params
(lysed weights set to zero), so that ``optax.apply_updates`` lands on the post-surgery weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.surgery.lifecycle import LYSED, SEDATED


def layer_index(life_state: PyTree) -> list[int | None]:
    """For each leaf, its pruned-layer index (``None`` for unpruned leaves)."""
    index, out = 0, []
    for s in jax.tree.leaves(life_state):
        if jnp.ndim(s) > 0:
            out.append(index)
            index += 1
        else:
            out.append(None)
    return out


def _route_leaf(g: jax.Array, s: jax.Array, gate: jax.Array | None) -> jax.Array:
    if jnp.ndim(s) == 0:
        return g
    if gate is not None and jnp.ndim(gate) > 0:
        g = jnp.where(s == SEDATED, g, g * gate.astype(g.dtype))
    return jnp.where(s == LYSED, jnp.zeros((), g.dtype), g)


def route_gradients(grads: PyTree, life_state: PyTree, gate: PyTree | None) -> PyTree:
    """The gradient the inner optimizer sees, for the dense params ``theta``.

    Args:
      grads: the straight-through gradient (with respect to the effective weights).
      life_state: the lifecycle state tree after this step's surgery.
      gate: the forward-pass gate multipliers of this step, or ``None``.

    Returns:
      A tree like ``grads``: gated for alive weights, unchanged for sedated ones, zero for
      lysed ones; unpruned leaves unchanged.
    """
    gate_tree = gate if gate is not None else jax.tree.map(lambda _: None, grads)
    return jax.tree.map(_route_leaf, grads, life_state, gate_tree)


def finish_updates(
    inner_updates: PyTree,
    life_state: PyTree,
    params: PyTree,
    new_params: PyTree,
    lr_scale: jax.Array,
) -> PyTree:
    """The wrapper's updates from the inner optimizer's.

    Args:
      inner_updates: the inner optimizer's updates.
      life_state: the lifecycle state tree after this step's surgery.
      params: the params passed to ``update``.
      new_params: the params after the surgery (newly lysed weights zeroed).
      lr_scale: float32 [num_layers], the anesthesia multipliers.

    Returns:
      A tree like ``params``: zero on lysed weights, scaled by the layer's multiplier
      elsewhere on pruned leaves, plus ``new_params - params`` (on unpruned leaves only that
      difference is added: a remedy's rewrite).
    """

    def one(u, s, p_old, p_new, i):
        if i is None:  # not pruned: only a rewrite (a remedy's re-initialisation) changes it
            return u if p_new is p_old else u + (p_new - p_old)
        u = jnp.where(s == LYSED, jnp.zeros((), u.dtype), u * lr_scale[i].astype(u.dtype))
        return u + (p_new - p_old)

    leaves = [
        one(u, s, po, pn, i)
        for u, s, po, pn, i in zip(
            jax.tree.leaves(inner_updates),
            jax.tree.leaves(life_state),
            jax.tree.leaves(params),
            jax.tree.leaves(new_params),
            layer_index(life_state),
            strict=True,
        )
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)
