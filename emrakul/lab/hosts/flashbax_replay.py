"""The uniform replay buffer of :mod:`emrakul.lab.hosts.replay` on flashbax's item buffer.

Same functions, same contract (``init`` / ``add`` / ``sample`` / ``size`` / ``can_sample`` /
``capacity`` over a NamedTuple state that lives in a ``lax.scan`` carry, ``jit``-s and
``vmap``-s), with the storage and the sampling done by flashbax (Toledo et al. 2023, "Flashbax:
Streamlining Experience Replay Buffers for Reinforcement Learning with JAX"): a trajectory buffer
of one row whose time axis holds the transitions, sampled one item at a time, uniformly with
replacement over the filled slots (Lin 1992; Mnih et al. 2015). It exists so that the two
buffers can be swapped in the DQN host and timed (``python -m benchmarks.replay_speed``);
sampling draws other random numbers than :mod:`~emrakul.lab.hosts.replay`, so runs differ
sample by sample while the distribution is the same.

Differences from :mod:`~emrakul.lab.hosts.replay`: flashbax fixes the sample size when its
buffer is made, so :func:`sample` builds its sampler for each static ``batch_size``, and it
refuses a ``batch_size`` above the capacity.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flashbax
import jax
import jax.numpy as jnp
import numpy as np
from flashbax.buffers.trajectory_buffer import TrajectoryBufferState

PyTree = Any


class FlashbaxReplayState(NamedTuple):
    """The buffer: the fields of :class:`~emrakul.lab.hosts.replay.ReplayState`, with the
    storage in flashbax's layout.

    Attributes:
      storage: the transitions' pytree, every leaf ``[1, capacity, ...]`` (flashbax's one
        add-batch row, then the time axis that holds the transitions).
      position: int32, the next slot written (the oldest transition once the buffer is full).
      size: int32, filled slots (``min(transitions added, capacity)``).
    """

    storage: PyTree
    position: jax.Array
    size: jax.Array


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    return int(value)


@functools.cache
def _buffer(capacity: int, batch_size: int) -> Any:
    """flashbax's item buffer of ``capacity`` slots that samples ``batch_size`` items and is
    added to in leading-axis batches."""
    return flashbax.make_item_buffer(
        max_length=capacity, min_length=1, sample_batch_size=batch_size, add_batches=True
    )


def _to_flashbax(state: FlashbaxReplayState) -> TrajectoryBufferState:
    return TrajectoryBufferState(
        experience=state.storage,
        current_index=state.position,
        is_full=state.size >= capacity(state),
    )


def _from_flashbax(state: TrajectoryBufferState, size: jax.Array) -> FlashbaxReplayState:
    position = jnp.asarray(state.current_index, jnp.int32)
    return FlashbaxReplayState(state.experience, position, jnp.asarray(size, jnp.int32))


def capacity(state: FlashbaxReplayState) -> int:
    """The static number of slots."""
    return int(jax.tree.leaves(state.storage)[0].shape[1])


def init(capacity: int, example_transition: PyTree) -> FlashbaxReplayState:
    """An empty buffer of ``capacity`` transitions shaped and typed like ``example_transition``.

    Args:
      capacity: number of slots (static, positive).
      example_transition: one unbatched transition (a pytree of arrays or array-likes); only its
        shapes and dtypes are used.

    Returns:
      A :class:`FlashbaxReplayState` with zero-filled storage.

    Raises:
      ValueError: a non-positive ``capacity`` or an empty transition.
    """
    capacity = _check_positive("capacity", capacity)
    if not jax.tree.leaves(example_transition):
        raise ValueError("example_transition must hold at least one array")
    example = jax.tree.map(
        lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(x)), example_transition
    )
    return _from_flashbax(_buffer(capacity, 1).init(example), 0)


def _check_batch(state: FlashbaxReplayState, batch: PyTree) -> int:
    """The batch's leading size, after checking it fits the buffer as ``replay.add`` does."""
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
        if jnp.shape(s)[2:] != jnp.shape(b)[1:]:
            raise ValueError(f"batch leaf shape {jnp.shape(b)} does not match slots {s.shape[2:]}")
    return n


def add(state: FlashbaxReplayState, batch: PyTree) -> FlashbaxReplayState:
    """Writes a batch of transitions (leading axis ``B``) at the write position, wrapping around.

    Args:
      state: the buffer.
      batch: a pytree like the example transition with a leading batch axis ``B <= capacity``.

    Returns:
      The updated buffer (slot ``(position + i) % capacity`` holds ``batch[i]``).

    Raises:
      ValueError: a batch whose structure, trailing shapes or leading sizes do not match, or
        ``B > capacity``.
    """
    n = _check_batch(state, batch)
    cap = capacity(state)
    batch = jax.tree.map(lambda s, b: jnp.asarray(b).astype(s.dtype), state.storage, batch)
    fb_state = _buffer(cap, 1).add(_to_flashbax(state), batch)
    return _from_flashbax(fb_state, jnp.minimum(state.size + n, cap))


def sample(state: FlashbaxReplayState, key: jax.Array, batch_size: int) -> PyTree:
    """``batch_size`` transitions drawn uniformly, with replacement, from the filled slots.

    Args:
      state: the buffer (holding at least one transition: :func:`can_sample`).
      key: PRNG key.
      batch_size: number of transitions (static, positive, at most the capacity).

    Returns:
      A pytree like the example transition with a leading ``batch_size`` axis.

    Raises:
      ValueError: a non-positive ``batch_size`` or one above the capacity.
    """
    batch_size = _check_positive("batch_size", batch_size)
    cap = capacity(state)
    if batch_size > cap:
        raise ValueError(f"flashbax samples at most capacity={cap} items, got {batch_size}")
    return _buffer(cap, batch_size).sample(_to_flashbax(state), key).experience


def size(state: FlashbaxReplayState) -> jax.Array:
    """int32, the number of filled slots."""
    return state.size


def can_sample(state: FlashbaxReplayState, batch_size: int) -> jax.Array:
    """bool, whether the buffer holds at least ``batch_size`` transitions."""
    return size(state) >= _check_positive("batch_size", batch_size)
