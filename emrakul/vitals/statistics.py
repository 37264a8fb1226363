"""The per-parameter running statistics of the vital signs, as a table of named entries.

A :class:`Statistic` names one statistic kept for every parameter leaf, says how it starts
(``init``, which fixes its shape and dtype) and how one gradient changes it (``update``, which
reads a :class:`LeafContext`: the leaf's weight, gradient, mask, the decay and thresholds, and
the previous value of every statistic of the leaf). :func:`emrakul.vitals.init`,
:func:`emrakul.vitals.update` and their checks enumerate a table of entries, :data:`STATISTICS`
by default, so a new vital sign is one entry and its update: entries named like a field of
:class:`~emrakul.vitals.VitalsState` are kept in that field, any other one in
``VitalsState.extra[name]`` (pass the extended table to both ``init`` and ``update``).

Every update is one elementwise expression, so XLA compiles each statistic of each leaf into one
fused loop. An update need not handle a non-finite gradient: where the gradient leaf holds a NaN
or an infinity the whole leaf keeps its previous values (see :func:`emrakul.vitals.update`).

Bias correction follows Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"):
an EMA started at zero is divided by ``1 - prod(decays)``; each leaf keeps that running product
(``debias``), so the decay may be traced and change between calls, and a skipped leaf stays
correctly corrected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

AGE_MAX = 65535
"""The largest dormancy age; ``age`` saturates there (it is a ``uint16``)."""


class LeafContext(NamedTuple):
    """What the update of a statistic reads for one parameter leaf.

    Attributes:
      weight: the parameter leaf.
      grad: its gradient, cast to the leaf's statistics dtype (that of its ``grad_mean``).
      mask: ``None`` (the leaf is not pruned) or its mask, a bool array of the leaf's shape or a
        scalar; the effective weight is ``weight * mask``.
      decay: the EMA decay, a scalar array as the caller passed it (it may be traced).
      weight_threshold: an effective weight of absolute value at most this is inert.
      grad_threshold: a gradient of absolute value at most this is inert.
      prev: the previous value of every statistic of the table on this leaf, by name.
    """

    weight: jax.Array
    grad: jax.Array
    mask: jax.Array | None
    decay: jax.Array
    weight_threshold: float | jax.Array
    grad_threshold: float | jax.Array
    prev: Mapping[str, jax.Array]


class Statistic(NamedTuple):
    """One named per-parameter statistic: how it starts and how a gradient updates it.

    Attributes:
      name: the key of the statistic (a field of ``VitalsState`` or a key of its ``extra``).
      init: ``init(param_leaf) -> array``, the initial value; its shape and dtype are the
        statistic's (e.g. the param's shape in :func:`stat_dtype`, or a per-leaf scalar).
      update: ``update(ctx: LeafContext) -> array``, the new value after one finite gradient, of
        the same shape and dtype as ``ctx.prev[name]``; one elementwise expression.
      changes: optional ``changes(ctx) -> bool array``, the elements the update changes (the
        others keep their previous value); ``None``: all of them.
    """

    name: str
    init: Callable[[jax.Array], jax.Array]
    update: Callable[[LeafContext], jax.Array]
    changes: Callable[[LeafContext], jax.Array] | None = None


def stat_dtype(dtype: Any) -> jnp.dtype:
    """The dtype of the EMA statistics kept for a leaf of ``dtype``: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def zeros_like_stat(param: jax.Array) -> jax.Array:
    """Zeros of the param's shape in its statistics dtype (:func:`stat_dtype`)."""
    return jnp.zeros(jnp.shape(param), stat_dtype(jnp.result_type(param)))


def ema(ctx: LeafContext, name: str, x: jax.Array) -> jax.Array:
    """The EMA step ``d * prev + (1 - d) * x`` of statistic ``name``, computed in at least
    float32 and stored in the statistic's dtype (a compact bfloat16 EMA keeps its decay exact)."""
    prev = ctx.prev[name]
    dt = stat_dtype(prev.dtype)
    d = ctx.decay.astype(dt)
    return (d * prev.astype(dt) + (1 - d) * x.astype(dt)).astype(prev.dtype)


def _flip_rate(ctx: LeafContext) -> jax.Array:
    # A flip: g and the last nonzero sign are both nonzero and differ, i.e. g * last < 0.
    prev = ctx.prev["flip_rate"]
    dt = stat_dtype(prev.dtype)
    d = ctx.decay.astype(dt)
    flip = jnp.where(ctx.grad * ctx.prev["last_sign"] < 0, 1 - d, 0)
    return (d * prev.astype(dt) + flip).astype(prev.dtype)


def _sign(ctx: LeafContext) -> jax.Array:
    return jnp.sign(ctx.grad).astype(jnp.int8)


def _age(ctx: LeafContext) -> jax.Array:
    w_abs = jnp.abs(ctx.weight) if ctx.mask is None else jnp.where(ctx.mask, jnp.abs(ctx.weight), 0)
    active = (w_abs > ctx.weight_threshold) & (jnp.abs(ctx.grad) > ctx.grad_threshold)
    age = ctx.prev["age"]
    older = age + (age < jnp.iinfo(age.dtype).max).astype(age.dtype)
    return jnp.where(active, jnp.zeros_like(age), older)


def _debias(ctx: LeafContext) -> jax.Array:
    prev = ctx.prev["debias"]
    return prev * ctx.decay.astype(prev.dtype)


GRAD_MEAN = Statistic("grad_mean", zeros_like_stat, lambda ctx: ema(ctx, "grad_mean", ctx.grad))
"""EMA of the gradient (Adam's first moment), the signal of the GSNR and of RigL-style growth."""

GRAD_SQ = Statistic(
    "grad_sq", zeros_like_stat, lambda ctx: ema(ctx, "grad_sq", ctx.grad * ctx.grad)
)
"""EMA of the squared gradient: the empirical Fisher diagonal and the GSNR's second moment."""

FLIP_RATE = Statistic("flip_rate", zeros_like_stat, _flip_rate)
"""EMA of the gradient-sign-flip indicator, in ``[0, 1]``: oscillation, the signal RPROP adapts
its step sizes by (Riedmiller & Braun, 1993, "A direct adaptive method for faster
backpropagation learning: the RPROP algorithm")."""

LAST_SIGN = Statistic(
    "last_sign", lambda p: jnp.zeros(jnp.shape(p), jnp.int8), _sign, lambda ctx: ctx.grad != 0
)
"""The sign (-1 or +1) of the last nonzero gradient, 0 if there was none (``int8``)."""

AGE = Statistic("age", lambda p: jnp.zeros(jnp.shape(p), jnp.uint16), _age)
"""Dormancy age (``uint16``, saturating at :data:`AGE_MAX`): consecutive updates in which the
effective weight or the gradient was negligible, cf. dormant neurons (Sokar, Agarwal, Castro &
Evci, 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning")."""

DEBIAS = Statistic("debias", lambda p: jnp.ones((), jnp.float32), _debias)
"""One float32 scalar per leaf: the product of the decays the leaf was updated with."""

STATISTICS: tuple[Statistic, ...] = (GRAD_MEAN, GRAD_SQ, FLIP_RATE, LAST_SIGN, AGE, DEBIAS)
"""The built-in statistics, in the order of the fields of ``VitalsState``."""


def _stored_as(statistic: Statistic, dtype: Any) -> Statistic:
    """``statistic`` kept in ``dtype`` (its update already computes in at least float32 and
    casts back, so only the initial value changes)."""
    return statistic._replace(init=lambda p: jnp.zeros(jnp.shape(p), dtype))


COMPACT_STATISTICS: tuple[Statistic, ...] = (
    _stored_as(GRAD_MEAN, jnp.bfloat16),
    _stored_as(GRAD_SQ, jnp.bfloat16),
    _stored_as(FLIP_RATE, jnp.bfloat16),
    LAST_SIGN,
    _stored_as(AGE, jnp.uint8),
    DEBIAS,
)
"""The built-in statistics in a compact state: bfloat16 EMAs (8 mantissa bits: about 0.4%
relative error per stored value, the decay applied in float32) and a ``uint8`` age saturating at
255 updates; 8 bytes per parameter instead of 15 (``wrap(..., compact_vitals=True)``)."""
