"""A uniform experience-replay buffer held as arrays (Lin 1992; Mnih et al. 2015, "Human-level
control through deep reinforcement learning").

The state is a :class:`ReplayState` NamedTuple of fixed-shape arrays, so the buffer lives inside
a ``lax.scan`` carry, ``jit``-s and ``vmap``-s over seeds. Transitions are any pytree of arrays
(e.g. a NamedTuple of ``obs``, ``action``, ``reward``, ``discount``, ``next_obs``); storage has
one leading ``capacity`` axis per leaf. ``add`` writes a leading-axis batch (one transition per
vectorised environment) at the write position, wrapping around the circular storage so that the
oldest transitions are overwritten first; ``sample`` draws uniformly, with replacement, from the
filled slots only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class ReplayState(NamedTuple):
    """The buffer.

    Attributes:
      storage: the transitions' pytree, every leaf with a leading ``capacity`` axis.
      position: int32, the next slot written (the oldest transition once the buffer is full).
      size: int32, filled slots (``min(transitions added, capacity)``).
    """

    storage: PyTree
    position: jax.Array
    size: jax.Array


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    return int(value)


def capacity(state: ReplayState) -> int:
    """The static number of slots."""
    return int(jax.tree.leaves(state.storage)[0].shape[0])


def init(capacity: int, example_transition: PyTree) -> ReplayState:
    """An empty buffer of ``capacity`` transitions shaped and typed like ``example_transition``.

    Args:
      capacity: number of slots (static, positive).
      example_transition: one unbatched transition (a pytree of arrays or array-likes); only its
        shapes and dtypes are used.

    Returns:
      A :class:`ReplayState` with zero-filled storage.

    Raises:
      ValueError: a non-positive ``capacity`` or an empty transition.
    """
    capacity = _check_positive("capacity", capacity)
    leaves = jax.tree.leaves(example_transition)
    if not leaves:
        raise ValueError("example_transition must hold at least one array")
    storage = jax.tree.map(
        lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.result_type(x)), example_transition
    )
    return ReplayState(storage, jnp.int32(0), jnp.int32(0))


def add(state: ReplayState, batch: PyTree) -> ReplayState:
    """Writes a batch of transitions (leading axis ``B``) at the write position, wrapping around.

    Slot ``(position + i) % capacity`` receives ``batch[i]``; once the buffer is full the oldest
    transitions are overwritten first.

    Args:
      state: the buffer.
      batch: a pytree like the example transition with a leading batch axis ``B <= capacity``.

    Returns:
      The updated buffer.

    Raises:
      ValueError: a batch whose structure, trailing shapes or leading sizes do not match, or
        ``B > capacity``.
    """
    cap = capacity(state)
    s_leaves, s_def = jax.tree.flatten(state.storage)
    b_leaves, b_def = jax.tree.flatten(batch)
    if s_def != b_def:
        raise ValueError(f"batch structure {b_def} does not match the buffer's {s_def}")
    sizes = {jnp.shape(b)[0] if jnp.ndim(b) else None for b in b_leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every batch leaf needs the same leading batch axis, got sizes {sizes}")
    (n,) = sizes
    if not 1 <= n <= cap:
        raise ValueError(f"batch size {n} must lie in [1, capacity={cap}]")
    for s, b in zip(s_leaves, b_leaves, strict=True):
        if jnp.shape(s)[1:] != jnp.shape(b)[1:]:
            raise ValueError(f"batch leaf shape {jnp.shape(b)} does not match slots {s.shape[1:]}")
    idx = (state.position + jnp.arange(n, dtype=jnp.int32)) % cap
    storage = jax.tree.map(
        lambda s, b: s.at[idx].set(b.astype(s.dtype), unique_indices=True), state.storage, batch
    )
    return ReplayState(
        storage=storage,
        position=(state.position + n) % cap,
        size=jnp.minimum(state.size + n, cap).astype(jnp.int32),
    )


def sample(state: ReplayState, key: jax.Array, batch_size: int) -> PyTree:
    """``batch_size`` transitions drawn uniformly, with replacement, from the filled slots.

    The caller makes sure the buffer holds at least one transition (:func:`can_sample`); an
    empty buffer returns its zero-filled slot 0.

    Args:
      state: the buffer.
      key: PRNG key.
      batch_size: number of transitions (static, positive).

    Returns:
      A pytree like the example transition with a leading ``batch_size`` axis.

    Raises:
      ValueError: a non-positive ``batch_size``.
    """
    batch_size = _check_positive("batch_size", batch_size)
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
    return jax.tree.map(lambda s: s[idx], state.storage)


def size(state: ReplayState) -> jax.Array:
    """int32, the number of filled slots."""
    return state.size


def can_sample(state: ReplayState, batch_size: int) -> jax.Array:
    """bool, whether the buffer holds at least ``batch_size`` transitions."""
    return state.size >= _check_positive("batch_size", batch_size)
