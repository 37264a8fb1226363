"""The per-weight lifecycle: alive, sedated, lysed.

* ``ALIVE``: in the forward pass, learning.
* ``SEDATED``: zero in the forward pass, but the dense weight keeps receiving the
  straight-through ("virtual") gradient and keeps learning, so it can wake with what it learned.
* ``LYSED``: zero and frozen (its optimizer moments are zeroed); it stays dead unless the
  controller allows regrowth, in which case it restarts from zero (as in RigL, Evci et al. 2020).

A lifecycle tree has the params' structure: pruned leaves hold ``int8`` arrays of the param's
shape, leaves that are not pruned hold the scalar ``ALIVE`` marker (shape ``()``), mirroring the
mask trees of :mod:`emrakul.masks`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.masks.tree import is_pruned

ALIVE = 0
SEDATED = 1
LYSED = 2

NEVER = -(2**30)
"""``changed_at`` of a weight that never changed state."""


class Lifecycle(NamedTuple):
    """Lifecycle of every prunable weight.

    Attributes:
      state: int8 tree (ALIVE / SEDATED / LYSED); scalar ``ALIVE`` markers for unpruned leaves.
      changed_at: int32 tree, the host step at which the weight last changed state (``NEVER``
        if it never did); scalar markers for unpruned leaves. Flip-flop damping compares it with
        the current step at surgery time, so nothing is updated per host step.
      changes: int32 [num_layers], cumulative number of state changes per pruned layer.
      reversals: int32 [num_layers], cumulative flip-flops per pruned layer: changes of a weight
        that had already changed state within the last ``2 * cooldown`` steps.
    """

    state: PyTree
    changed_at: PyTree
    changes: jax.Array
    reversals: jax.Array


def init(masks: PyTree) -> Lifecycle:
    """All pruned weights ALIVE, from a mask tree (:func:`emrakul.masks.init`)."""
    state = jax.tree.map(
        lambda m: jnp.zeros(jnp.shape(m), jnp.int8) if is_pruned(m) else jnp.int8(ALIVE), masks
    )
    changed_at = jax.tree.map(lambda m: jnp.full(jnp.shape(m), NEVER, jnp.int32), masks)
    n = sum(1 for m in jax.tree.leaves(masks) if is_pruned(m))
    return Lifecycle(state, changed_at, jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32))


def alive_mask(state: PyTree) -> PyTree:
    """The forward-pass mask of a lifecycle-state tree: True where ALIVE (the scalar ALIVE
    markers of unpruned leaves become scalar True markers, as in :mod:`emrakul.masks`)."""
    return jax.tree.map(lambda s: s == ALIVE, state)


def alive(life: Lifecycle) -> PyTree:
    """The forward-pass mask of a :class:`Lifecycle` (see :func:`alive_mask`)."""
    return alive_mask(life.state)


def pruned_leaves(tree: PyTree, life: Lifecycle) -> list:
    """The leaves of ``tree`` that correspond to pruned leaves, in flattening order."""
    return [
        x
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(life.state), strict=True)
        if is_pruned(s)
    ]
