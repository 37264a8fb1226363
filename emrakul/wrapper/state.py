"""The wrapper's optimizer state (:class:`EmrakulState`) and its traced knobs (:class:`Knobs`).

Everything the wrapper carries between steps is one NamedTuple pytree, so it passes through
``jit``, ``vmap``, ``lax.scan`` and checkpoints like any optax state. Hyperparameters that a
controller or an experiment may change during a run live in :class:`Knobs` as traced arrays,
so changing them does not recompile.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from emrakul.surgery.lifecycle import Lifecycle
from emrakul.wrapper.health import Health


class Knobs(NamedTuple):
    """Traced hyperparameters of the surgery (change them in the state: no recompilation).

    Attributes:
      target: float32 [num_layers], per-layer final sparsity (uniform or ERK distribution).
      every: int32, host steps between surgeries in automatic mode.
      cooldown: int32, host steps a weight must wait after a state change before another.
      anesthesia_threshold: a layer losing more than this fraction of its alive weights in one
        surgery is anesthetised.
      anesthesia_depth: its learning-rate multiplier drops to at most this (1 = off).
      anesthesia_recovery: per host step, ``scale <- 1 - (1 - scale) * (1 - recovery)``.
      vitals_decay: EMA decay of the vital signs.
      lysed: float32 [num_layers], the part of each original layer that lysis removed while it
        counted as pruned (units along the structure's axis, else weights); 0 before any lysis.
      kept: float32 [num_layers], the part of each original layer that is left (1 before any
        lysis). A decision's sparsity ``s`` of the original layer becomes ``(s - lysed) / kept``
        of the compact one, so training after lysis prunes exactly as it would have masked.
    """

    target: jax.Array
    every: jax.Array
    cooldown: jax.Array
    anesthesia_threshold: jax.Array
    anesthesia_depth: jax.Array
    anesthesia_recovery: jax.Array
    vitals_decay: jax.Array
    lysed: jax.Array
    kept: jax.Array


class EmrakulState(NamedTuple):
    """The wrapper's optimizer state.

    Attributes:
      inner: the inner optimizer's state.
      life: the :class:`~emrakul.surgery.lifecycle.Lifecycle` (masks are ``state == ALIVE``).
      vitals: a :class:`~emrakul.vitals.VitalsState`, or ``None`` when the controller does not
        need vital signs (keeping them costs a fraction of every step).
      controller: the controller's state.
      gate: float multipliers for the forward pass of the current step (gate controllers),
        or ``None``.
      lr_scale: float32 [num_layers], anesthesia learning-rate multipliers.
      knobs: the traced :class:`Knobs`.
      step: int32, host steps taken.
      key: PRNG key of the run (gates and decisions fold in the step).
      last_cut: float32 [num_layers], fraction of alive weights removed by the last surgery.
      last_grown: float32 [num_layers], weights that entered ALIVE in the last surgery / size.
      health: the :class:`~emrakul.wrapper.health.Health` tracker (loss EMAs and the last
        validation accuracy).
    """

    inner: Any
    life: Lifecycle
    vitals: Any
    controller: Any
    gate: Any
    lr_scale: jax.Array
    knobs: Knobs
    step: jax.Array
    key: jax.Array
    last_cut: jax.Array
    last_grown: jax.Array
    health: Health


def find_state(state: Any) -> EmrakulState:
    """The EmrakulState inside ``state`` (it may be nested in a chain or MultiSteps).

    Raises:
      ValueError: there is not exactly one EmrakulState inside ``state``.
    """
    if isinstance(state, EmrakulState):
        return state
    found = [
        s
        for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: isinstance(s, EmrakulState))
        if isinstance(s, EmrakulState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one Emrakul state inside the optimizer state, found {len(found)}"
        )
    return found[0]


def gate_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """The PRNG key of the gates used at host step ``step`` (even fold-ins of the run key)."""
    return jax.random.fold_in(key, 2 * step)


def decision_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """The PRNG key of the surgery decided at host step ``step`` (odd fold-ins)."""
    return jax.random.fold_in(key, 2 * step + 1)
