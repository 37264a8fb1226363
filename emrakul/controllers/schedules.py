"""Sparsity and drop-fraction schedules shared by the controllers (pure, traced-friendly)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def progress(step: jax.Array, total_steps: int, start: float, end: float) -> jax.Array:
    """Fraction of the way from ``start * T`` to ``end * T`` (clipped to [0, 1])."""
    t0 = start * total_steps
    t1 = max(end * total_steps, t0 + 1)
    return jnp.clip((jnp.asarray(step, jnp.float32) - t0) / (t1 - t0), 0.0, 1.0)


def cubic(step: jax.Array, total_steps: int, target, start: float, end: float) -> jax.Array:
    """Gradual magnitude pruning's cubic schedule (Zhu & Gupta 2017, "To prune, or not to
    prune"): ``s_t = s_f * (1 - (1 - p)^3)`` with ``p`` the progress from ``start`` to ``end``
    (fractions of training), starting from 0 sparsity. Returns an array like ``target``.
    """
    p = progress(step, total_steps, start, end)
    return jnp.asarray(target, jnp.float32) * (1.0 - (1.0 - p) ** 3)


def cosine_decay(step: jax.Array, total_steps: int, alpha, end: float) -> jax.Array:
    """RigL's drop fraction ``alpha / 2 * (1 + cos(pi * t / T_end))`` for ``t < T_end``, then 0
    (Evci et al. 2020, "Rigging the Lottery")."""
    t_end = max(end * total_steps, 1.0)
    t = jnp.asarray(step, jnp.float32)
    frac = 0.5 * jnp.asarray(alpha, jnp.float32) * (1.0 + jnp.cos(jnp.pi * t / t_end))
    return jnp.where(t < t_end, frac, 0.0)


def between(step: jax.Array, total_steps: int, start: float, end: float) -> jax.Array:
    """Whether ``start * T <= step < end * T`` (a bool scalar, traced ``step``)."""
    t = jnp.asarray(step, jnp.float32)
    return (t >= start * total_steps) & (t < end * total_steps)
