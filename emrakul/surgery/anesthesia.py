"""Anesthesia: temporary per-layer learning-rate damping around a large cut.

A layer that has just lost a large fraction of its alive weights sees its activations and
gradients shift abruptly; damping its learning rate for a while lets the remaining weights
re-settle instead of over-reacting to the transient (a per-layer analogue of the learning-rate
warm-up after pruning or regrowth). The state is one multiplier per pruned layer, in
``(0, 1]``, that the optimizer wrapper multiplies into that layer's update:

* at a surgery, :func:`anesthetize` lowers the multiplier of every layer whose cut fraction
  (:attr:`emrakul.surgery.operate.SurgeryResult.cut`) exceeds ``threshold`` to at most
  ``depth``;
* every host step, :func:`recover` moves every multiplier geometrically back toward 1:
  ``1 - scale`` shrinks by the factor ``1 - rate``.

All arguments may be traced (changing them does not recompile) and both functions are
elementwise, so they jit and vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_same_shape(a: jax.Array, b: jax.Array, a_name: str, b_name: str) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape (one entry per pruned layer), got "
            f"{jnp.shape(a)} and {jnp.shape(b)}"
        )


def anesthetize(scale: jax.Array, cut: jax.Array, threshold, depth) -> jax.Array:
    """Lowers the learning-rate multiplier of layers that were cut deeply.

    Args:
      scale: float32 [num_layers], the current multipliers (1 = not anesthetized).
      cut: float32 [num_layers], the fraction of each layer's alive weights just removed.
      threshold: a layer with ``cut > threshold`` is anesthetized (scalar or [num_layers]).
      depth: its multiplier becomes ``min(scale, depth)`` (scalar or [num_layers]); an
        already deeper anesthesia is kept.

    Returns:
      The new multipliers, float32 [num_layers].
    """
    _check_same_shape(scale, cut, "scale", "cut")
    scale = jnp.asarray(scale, jnp.float32)
    deep = jnp.asarray(cut, jnp.float32) > jnp.asarray(threshold, jnp.float32)
    return jnp.where(deep, jnp.minimum(scale, jnp.asarray(depth, jnp.float32)), scale)


def recover(scale: jax.Array, rate) -> jax.Array:
    """One host step of recovery: ``scale <- 1 - (1 - scale) * (1 - rate)``.

    After ``t`` steps without a new cut, ``1 - scale`` has shrunk by ``(1 - rate) ** t``:
    ``rate = 0`` never recovers, ``rate = 1`` recovers in one step.

    Args:
      scale: float32 [num_layers], the current multipliers.
      rate: recovery rate in ``[0, 1]`` (scalar or [num_layers]).

    Returns:
      The new multipliers, float32 [num_layers].
    """
    scale = jnp.asarray(scale, jnp.float32)
    return 1.0 - (1.0 - scale) * (1.0 - jnp.asarray(rate, jnp.float32))
