"""Training-health tracking: loss EMAs and the last validation accuracy.

The learned controller reads how training is going (is the loss still falling, did the last cut
hurt the validation accuracy), so the wrapper folds the ``value`` (loss) and ``val_accuracy``
passed to ``update`` into two exponential moving averages and a kept scalar. The EMAs start at
zero and are bias-corrected when read, as Adam's moments are (Kingma & Ba 2015).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

FAST = 0.9
"""Decay of the fast loss EMA."""
SLOW = 0.99
"""Decay of the slow loss EMA."""


class Health(NamedTuple):
    """Running training-health signals the learned controller observes.

    Attributes:
      loss_fast: EMA (decay 0.9) of the ``value`` (loss) passed to ``update``.
      loss_slow: EMA (decay 0.99) of the same.
      count: int32, finite losses folded in so far (for Adam-style bias correction).
      val_accuracy: the last ``val_accuracy`` passed to ``update`` (0 if none).
    """

    loss_fast: jax.Array
    loss_slow: jax.Array
    count: jax.Array
    val_accuracy: jax.Array


def init_health() -> Health:
    """A tracker that has seen nothing: zero EMAs, zero count, zero validation accuracy."""
    zero = jnp.float32(0.0)
    return Health(zero, zero, jnp.int32(0), zero)


def track_health(health: Health, value: jax.Array | None, val_accuracy: jax.Array | None) -> Health:
    """Folds this step's loss and validation accuracy into ``health``.

    Args:
      health: the tracker.
      value: the loss, a scalar, or ``None`` (nothing to fold in); non-finite losses are skipped.
      val_accuracy: a scalar kept until the next one, or ``None`` (keep the last one).

    Returns:
      The new :class:`Health`.

    Raises:
      ValueError: a ``value`` that is not a scalar.
    """
    if value is not None:
        v = jnp.asarray(value, jnp.float32)
        if v.ndim:
            raise ValueError(f"value (the loss) must be a scalar, got shape {v.shape}")
        ok = jnp.isfinite(v)
        health = health._replace(
            loss_fast=jnp.where(ok, FAST * health.loss_fast + (1 - FAST) * v, health.loss_fast),
            loss_slow=jnp.where(ok, SLOW * health.loss_slow + (1 - SLOW) * v, health.loss_slow),
            count=health.count + ok.astype(jnp.int32),
        )
    if val_accuracy is not None:
        health = health._replace(val_accuracy=jnp.asarray(val_accuracy, jnp.float32).reshape(()))
    return health


def health_vector(health: Health) -> jax.Array:
    """``[loss, relative slope, validation accuracy]`` (float32 [3]) from :class:`Health`;
    the loss is the bias-corrected fast EMA, the slope ``(fast - slow) / slow``."""
    n = health.count.astype(jnp.float32)
    seen = health.count > 0
    fast = jnp.where(seen, health.loss_fast / (1 - FAST**n), 0.0)
    slow = jnp.where(seen, health.loss_slow / (1 - SLOW**n), 0.0)
    slope = (fast - slow) / (jnp.abs(slow) + 1e-8)
    return jnp.stack([fast, slope, health.val_accuracy]).astype(jnp.float32)
