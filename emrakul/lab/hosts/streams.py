"""Non-stationary streams over MNIST-1D: the settings where a network must keep learning.

A stream is a sequence of tasks made from one dataset by a transform that changes with the host
step, a pure function of ``(stream key, step)``, so the whole stream is one compiled program
and every arm of a comparison sees the same stream for the same seed:

* ``permuted_labels``: at every task switch the ten labels are re-mapped by a fresh random
  permutation (the plasticity benchmark of Lyle et al. 2023, "Understanding plasticity in neural
  networks", and Dohare et al. 2024, "Loss of plasticity in deep continual learning", Nature 632).
* ``permuted_inputs``: the 40 input positions are re-permuted at every switch (permuted MNIST,
  Goodfellow et al. 2013; Dohare et al. 2024).
* ``drift``: no sharp boundaries: the signal is shifted along its (circular) axis by a smoothly
  drifting, fractional number of positions and scaled by a smoothly drifting gain, each a sum of
  three sinusoids with random frequencies (a few cycles over 30 tasks) and phases. Its "tasks"
  are equal segments of the stream, used only to measure.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.lab.hosts.mnist1d import NUM_CLASSES, SIGNAL_LENGTH

STREAMS = ("permuted_labels", "permuted_inputs", "drift")


class Stream(NamedTuple):
    """A stream's static description.

    Attributes:
      kind: one of :data:`STREAMS`.
      num_tasks: number of tasks (segments of ``drift``).
      task_steps: host steps per task.
      shift: ``drift``'s largest shift, in input positions.
      gain: ``drift``'s largest log-gain (the gain moves within ``[e^-gain, e^gain]``).
    """

    kind: str
    num_tasks: int
    task_steps: int
    shift: float = 10.0
    gain: float = 0.7


def check_stream(stream: Stream) -> Stream:
    """Returns ``stream`` with Python numbers, or raises ``ValueError`` naming the field."""
    if stream.kind not in STREAMS:
        raise ValueError(f"stream.kind must be one of {STREAMS}, got {stream.kind!r}")
    for name in ("num_tasks", "task_steps"):
        value = getattr(stream, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"stream.{name} must be a positive int, got {value!r}")
    for name in ("shift", "gain"):
        if not np.isfinite(float(getattr(stream, name))) or float(getattr(stream, name)) < 0:
            raise ValueError(f"stream.{name} must be a finite number >= 0")
    return Stream(stream.kind, int(stream.num_tasks), int(stream.task_steps),
                  float(stream.shift), float(stream.gain))  # fmt: skip


def task_of(stream: Stream, step: jax.Array) -> jax.Array:
    """int32: the task a host step belongs to."""
    return (jnp.asarray(step, jnp.int32) // stream.task_steps).astype(jnp.int32)


def _drift(stream: Stream, key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(shift in positions, log gain)`` at ``step``: sums of three random sinusoids."""
    k_freq, k_phase = jax.random.split(jax.random.fold_in(key, 1))
    freq = jax.random.uniform(k_freq, (2, 3), minval=0.03, maxval=0.15)  # cycles per task
    phase = jax.random.uniform(k_phase, (2, 3), maxval=2 * np.pi)
    t = jnp.asarray(step, jnp.float32) / stream.task_steps
    waves = jnp.mean(jnp.sin(2 * np.pi * freq * t + phase), axis=-1)  # [2] in [-1, 1]
    return stream.shift * waves[0], stream.gain * waves[1]


def _roll(x: jax.Array, shift: jax.Array) -> jax.Array:
    """Circularly shifts ``[..., 40]`` signals by a fractional number of positions."""
    pos = (jnp.arange(SIGNAL_LENGTH) - shift) % SIGNAL_LENGTH
    lo = jnp.floor(pos).astype(jnp.int32)
    frac = pos - lo
    return (1 - frac) * x[..., lo] + frac * x[..., (lo + 1) % SIGNAL_LENGTH]


def transform(
    stream: Stream, key: jax.Array, step: jax.Array, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The examples ``(x [..., 40], y [...])`` as the stream presents them at host ``step``.

    Args:
      stream: the stream.
      key: the stream's PRNG key (one per seed; the same for every arm).
      step: the host step (traced).
      x: signals.
      y: int labels.

    Returns:
      The transformed ``(x, y)``.
    """
    task_key = jax.random.fold_in(key, task_of(stream, step))
    if stream.kind == "permuted_labels":
        return x, jax.random.permutation(task_key, NUM_CLASSES)[y]
    if stream.kind == "permuted_inputs":
        return x[..., jax.random.permutation(task_key, SIGNAL_LENGTH)], y
    shift, log_gain = _drift(stream, key, step)
    return jnp.exp(log_gain) * _roll(x, shift), y
