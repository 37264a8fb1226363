"""What a training loop reads from the wrapper's state: the forward-pass weights and sparsity.

:func:`masked` is straight-through: its value is ``params * (state == ALIVE) * gate`` and its
gradient with respect to ``params`` is the identity, so the gradient a loop computes is the
dense gradient of the effective weights, which ``update`` then routes through the lifecycle.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from emrakul import masks as msk
from emrakul._tree import PyTree, check_same_structure
from emrakul.surgery import lifecycle
from emrakul.wrapper.state import EmrakulState, find_state


def _masked_leaf(p: jax.Array, s: jax.Array, g: jax.Array | None) -> jax.Array:
    if jnp.ndim(s) == 0:
        return p
    eff = jnp.where(s == lifecycle.ALIVE, p, jnp.zeros((), p.dtype))
    if g is not None and jnp.ndim(g) > 0:
        eff = eff * g.astype(p.dtype)
    return p + jax.lax.stop_gradient(eff - p)


def masked(params: PyTree, state: EmrakulState) -> PyTree:
    """The forward-pass weights: dead weights zeroed and gates applied, straight-through.

    The value is ``params * (state == ALIVE) * gate``; the gradient with respect to ``params``
    is the identity (the dense gradient of the effective weights), which ``update`` then routes:
    chain rule through the gates for alive weights, kept for sedated weights, zeroed for lysed.

    Args:
      params: the dense parameters.
      state: the wrapper's state (from ``init``/``update`` of :func:`emrakul.wrap`), possibly
        nested in a chain's state.

    Returns:
      A tree like ``params``.
    """
    state = find_state(state)
    check_same_structure(params, state.life.state, "params", "opt_state lifecycle")
    if state.gate is None:
        return jax.tree.map(lambda p, s: _masked_leaf(p, s, None), params, state.life.state)
    return jax.tree.map(_masked_leaf, params, state.life.state, state.gate)


def sparsity(state: Any) -> jax.Array:
    """Fraction of pruned-leaf weights that are not ALIVE."""
    return msk.sparsity(lifecycle.alive_mask(find_state(state).life.state))


def layer_sparsity(state: Any) -> jax.Array:
    """float32 [num_layers]: per pruned layer, the fraction of weights not ALIVE."""
    leaves = [s for s in jax.tree.leaves(find_state(state).life.state) if jnp.ndim(s) > 0]
    return jnp.stack([jnp.mean((s != lifecycle.ALIVE).astype(jnp.float32)) for s in leaves])
