"""Dynamic heuristic controllers: GSNR, DSD, harmonic annealing and breathing (EMA + hysteresis).

These controllers change their minds during training. Pruned weights are *sedated* (except in
DSD): they leave the forward pass but keep learning from the straight-through gradient, so they
can wake up again when their score overtakes an alive weight's.

Each factory returns a :class:`~emrakul.controllers.base.Controller` whose state holds jnp
arrays only (the continuous hyperparameters live there as traced scalars, so they can be
changed, or ``vmap``-ed over, without recompiling), and whose ``decide`` works under ``jit`` and
``vmap`` with a traced step. Schedule *fractions* (``start``, ``end``, ``phases``) are static:
they are compared with the static ``observation.total_steps``. Every layer ends at its entry of
``observation.target``; :func:`emrakul.surgery.operate.operate` realises the decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree, check_same_structure
from emrakul.controllers import schedules
from emrakul.controllers.base import (
    Controller,
    Decision,
    Observation,
    leaf_scores,
    make_decision,
)
from emrakul.masks.tree import is_pruned
from emrakul.surgery.lifecycle import ALIVE, LYSED, SEDATED
from emrakul.vitals.signals import gsnr as gsnr_signal

_TIE = 1e-3
"""Weight of the magnitude tie-break added to GSNR scores (see :func:`gsnr`)."""


def _check_unit(name: str, value: float, *, open_low: bool = False, open_high=False) -> float:
    """Validates a static fraction in [0, 1] (ends optionally open); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    low_ok = v > 0 if open_low else v >= 0
    high_ok = v < 1 if open_high else v <= 1
    if not (math.isfinite(v) and low_ok and high_ok):
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must lie in {lo}0, 1{hi}, got {name}={value!r}")
    return v


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Validates a static, finite, positive (or non-negative) number; returns it as a float."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {name}={value!r}")
    return float(value)


def _check_window(start: float, end: float) -> tuple[float, float]:
    start = _check_unit("start", start)
    end = _check_unit("end", end)
    if end < start:
        raise ValueError(f"need start <= end, got start={start}, end={end}")
    return start, end


def _pruned_count(obs: Observation, name: str) -> int:
    """Checks the observation's trees and target; returns the number of pruned layers."""
    check_same_structure(obs.params, obs.state, "observation.params", "observation.state")
    num = sum(1 for s in jax.tree.leaves(obs.state) if is_pruned(s))
    if jnp.shape(obs.target) != (num,):
        raise ValueError(
            f"{name}: observation.target must have shape ({num},) (one sparsity per pruned "
            f"layer), got {jnp.shape(obs.target)}"
        )
    if not isinstance(obs.total_steps, int | np.integer) or obs.total_steps < 1:
        raise ValueError(
            f"{name}: observation.total_steps must be a static positive Python int, got "
            f"{obs.total_steps!r}"
        )
    return num


def _scores(obs: Observation, fn: Callable[..., jax.Array], *trees: PyTree) -> PyTree:
    """``fn(state, *leaves)`` as float32 on pruned leaves; a scalar 0 marker elsewhere."""
    return leaf_scores(obs, fn, obs.state, *trees)


_decision = make_decision


def _between(step: jax.Array, total_steps: int, start: float, end: float) -> jax.Array:
    """Whether ``start * T <= step < end * T``."""
    t = jnp.asarray(step, jnp.float32)
    return (t >= start * total_steps) & (t < end * total_steps)


def _scalar(value: float) -> jax.Array:
    return jnp.asarray(value, jnp.float32)


# --------------------------------------------------------------------------------------------
# GSNR


class GsnrState(NamedTuple):
    """State of :func:`gsnr`.

    Attributes:
      churn: float32, the fraction of alive weights offered for swapping per surgery.
    """

    churn: jax.Array


def gsnr(start: float = 0.2, end: float = 0.8, churn: float = 0.1) -> Controller:
    """Dynamic pruning by the gradient signal-to-noise ratio (Siems et al. 2021, "Dynamic
    Pruning of a Neural Network via Gradient Signal-to-Noise Ratio").

    The GSNR ``E[g]^2 / Var[g]`` of a weight (Liu et al. 2020) is high when minibatch gradients
    agree about it, i.e. when it generalises; weights with a low GSNR are pruned.

    * Sparsity follows the cubic schedule from 0 at ``start * T`` to ``observation.target`` at
      ``end * T`` (:func:`~emrakul.controllers.schedules.cubic`).
    * ``drop_score = grow_score = log1p(GSNR) + 1e-3 * |theta| / max|theta|`` (per layer), from
      the vital signs (:func:`emrakul.vitals.gsnr`). ``log1p`` keeps the score rank-friendly
      (GSNR spans six decades); the small magnitude term only breaks ties, e.g. while the
      statistics are still empty.
    * Weights leave to SEDATED: they keep learning and their GSNR keeps being measured from the
      dense straight-through gradient, so they can return.
    * Between ``start`` and ``end``, every surgery swaps the ``churn`` fraction of alive weights
      with the lowest GSNR for the sedated ones with the highest.

    Args:
      start: fraction of training at which pruning starts (static, in [0, 1]).
      end: fraction at which the target is reached and swapping stops (static, ``>= start``).
      churn: fraction of alive weights offered for swapping per surgery (in [0, 1]; stored in
        the controller state as a traced scalar).

    Returns:
      A controller with ``drop_to=SEDATED`` and ``needs_vitals=True``.

    Raises:
      ValueError: fractions outside [0, 1] or ``end < start``.
    """
    start, end = _check_window(start, end)
    churn = _check_unit("churn", churn)

    def init(params: PyTree, observation: Observation | None = None, key=None) -> GsnrState:
        del params, observation, key
        return GsnrState(churn=_scalar(churn))

    def decide(obs: Observation, state: GsnrState) -> tuple[Decision, GsnrState]:
        num = _pruned_count(obs, "gsnr")
        if obs.vitals is None:
            raise ValueError(
                "gsnr needs observation.vitals (a VitalsState); the controller declares "
                "needs_vitals=True, so the wrapper must keep vital signs"
            )
        ratio = gsnr_signal(obs.vitals)
        check_same_structure(obs.params, ratio, "observation.params", "observation.vitals")

        def score(s, w, r):
            mag = jnp.abs(w).astype(jnp.float32)
            tie = mag / (jnp.max(mag) + jnp.finfo(jnp.float32).tiny)
            return jnp.log1p(r.astype(jnp.float32)) + _TIE * tie

        scores = _scores(obs, score, obs.params, ratio)
        sparsity = schedules.cubic(obs.step, obs.total_steps, obs.target, start, end)
        swap = jnp.where(_between(obs.step, obs.total_steps, start, end), state.churn, 0.0)
        go = jnp.asarray(obs.step, jnp.float32) >= start * obs.total_steps
        return _decision(num, sparsity, swap, scores, scores, go), state

    return Controller(name="gsnr", init=init, decide=decide, drop_to=SEDATED, needs_vitals=True)


# --------------------------------------------------------------------------------------------
# DSD


def dsd(phases: tuple[float, float, float] = (0.2, 0.45, 0.6)) -> Controller:
    """Dense-sparse-dense training (Han et al. 2017, "DSD: Dense-Sparse-Dense Training for Deep
    Neural Networks"), ending sparse.

    With ``phases = (a, b, c)`` and ``T`` the run length:

    * ``step < a T``: dense.
    * ``a T <= step < b T``: one-shot magnitude pruning to ``observation.target``; the pruned
      weights are LYSED (zeroed) and the sparse network is retrained.
    * ``b T <= step < c T``: re-dense: sparsity 0, every lysed weight is regrown and restarts
      from zero (``regrow_lysed=True``), as in DSD's final dense phase.
    * ``step >= c T``: magnitude-pruned to the target again until the end, so the run ends at
      the target sparsity (DSD proper ends dense; this is DSDS).

    Scores are ``|theta|`` (regrown weights all score 0 and are all regrown anyway). The
    controller is stateless (its state is ``()``).

    Args:
      phases: static, strictly increasing fractions of training in (0, 1).

    Returns:
      A controller with ``drop_to=LYSED`` and ``regrow_lysed=True``.

    Raises:
      ValueError: ``phases`` is not three strictly increasing numbers in (0, 1).
    """
    phases = tuple(phases)
    if len(phases) != 3:
        raise ValueError(f"phases must hold three fractions (a, b, c), got {phases!r}")
    a, b, c = (
        _check_unit(f"phases[{i}]", p, open_low=True, open_high=True) for i, p in enumerate(phases)
    )
    if not a < b < c:
        raise ValueError(f"phases must be strictly increasing, got {phases!r}")

    def init(params: PyTree, observation: Observation | None = None, key=None) -> tuple:
        del params, observation, key
        return ()

    def decide(obs: Observation, state: tuple) -> tuple[Decision, tuple]:
        num = _pruned_count(obs, "dsd")
        T = obs.total_steps
        t = jnp.asarray(obs.step, jnp.float32)
        sparse = _between(obs.step, T, a, b) | (t >= c * T)
        sparsity = jnp.where(sparse, jnp.asarray(obs.target, jnp.float32), 0.0)
        mag = _scores(obs, lambda s, w: jnp.abs(w), obs.params)
        return _decision(num, sparsity, 0.0, mag, mag, True), state

    return Controller(name="dsd", init=init, decide=decide, drop_to=LYSED, regrow_lysed=True)


# --------------------------------------------------------------------------------------------
# Harmonic annealing


class HarmonicState(NamedTuple):
    """State of :func:`harmonic` (traced hyperparameters).

    Attributes:
      period: float32, the oscillation period as a fraction of training.
      amplitude: float32, the relative amplitude in [0, 1].
    """

    period: jax.Array
    amplitude: jax.Array


def harmonic_sparsity(step, total_steps: int, target, period, amplitude, start, end):
    """The harmonic-annealing schedule (see :func:`harmonic`); an array like ``target``.

    ``s(t) = s_f * clip(r + a * (1 - r) * sin(2 pi t / (P T)), 0, 1)`` with the linear ramp
    ``r = clip((t - start T) / ((end - start) T), 0, 1)``.
    """
    r = schedules.progress(step, total_steps, start, end)
    angle = 2.0 * jnp.pi * jnp.asarray(step, jnp.float32) / (period * total_steps)
    level = jnp.clip(r + amplitude * (1.0 - r) * jnp.sin(angle), 0.0, 1.0)
    return jnp.asarray(target, jnp.float32) * level


def harmonic(
    period: float = 0.2, amplitude: float = 0.3, end: float = 0.8, start: float = 0.0
) -> Controller:
    """Harmonic annealing: an oscillating sparsity target whose swings die out at ``end``.

    With ``s_f = observation.target``, ``T`` the run length, ``P = period`` and
    ``a = amplitude``, the sparsity at step ``t`` is

        ``s(t) = s_f * clip(r(t) + a * (1 - r(t)) * sin(2 pi t / (P T)), 0, 1)``,

    ``r(t)`` the linear ramp from 0 at ``start * T`` to 1 at ``end * T``. Since ``a <= 1``,
    ``r + a (1 - r) sin <= 1``, so ``0 <= s(t) <= s_f < 1``; the swing ``a s_f (1 - r)``
    anneals linearly to 0, and ``s(t) = s_f`` exactly from ``end * T`` on. Early on, the
    negative half-waves are clipped to dense phases.

    Weights leave to SEDATED and keep learning. When the target drops, sedated weights wake in
    order of their own accumulated magnitude ``|theta|``: a sedated weight that kept receiving
    gradient signal grows, in the spirit of synaptic-flow conservation (Tanaka et al. 2020,
    "Pruning neural networks without any data by iteratively conserving synaptic flow"), and
    comes back first. ``drop_score = grow_score = |theta|``; no churn. Oscillating sparsity as
    a regulariser follows the cyclical sparsity / cyclic pruning literature (e.g. Srinivas et
    al. 2022, "Cyclical Pruning for Sparse Neural Networks").

    Args:
      period: oscillation period as a fraction of training (> 0; traced in the state).
      amplitude: relative amplitude ``a`` in [0, 1] (traced in the state).
      end: fraction of training from which the sparsity is exactly the target (static).
      start: fraction of training at which the ramp starts (static, ``<= end``).

    Returns:
      A controller with ``drop_to=SEDATED``.

    Raises:
      ValueError: ``period <= 0``, ``amplitude`` outside [0, 1], or a bad ``start``/``end``.
    """
    start, end = _check_window(start, end)
    amplitude = _check_unit("amplitude", amplitude)
    period = _check_positive("period", period)

    def init(params: PyTree, observation: Observation | None = None, key=None) -> HarmonicState:
        del params, observation, key
        return HarmonicState(period=_scalar(period), amplitude=_scalar(amplitude))

    def decide(obs: Observation, state: HarmonicState) -> tuple[Decision, HarmonicState]:
        num = _pruned_count(obs, "harmonic")
        sparsity = harmonic_sparsity(
            obs.step, obs.total_steps, obs.target, state.period, state.amplitude, start, end
        )
        mag = _scores(obs, lambda s, w: jnp.abs(w), obs.params)
        return _decision(num, sparsity, 0.0, mag, mag, True), state

    return Controller(name="harmonic", init=init, decide=decide, drop_to=SEDATED)


# --------------------------------------------------------------------------------------------
# Breathing: EMA importance with hysteresis


class BreathingState(NamedTuple):
    """State of :func:`breathing`.

    Attributes:
      importance: EMA of ``|theta * grad|`` per weight (float32 arrays on pruned leaves, scalar
        0 markers elsewhere).
      decay: float32, the EMA decay.
      hysteresis: float32, the incumbents' relative bonus.
      churn: float32, the swap fraction per surgery.
    """

    importance: PyTree
    decay: jax.Array
    hysteresis: jax.Array
    churn: jax.Array


def breathing(
    decay: float = 0.9,
    hysteresis: float = 0.1,
    start: float = 0.2,
    end: float = 0.8,
    churn: float = 0.05,
) -> Controller:
    """EMA importance with hysteresis: a network that breathes in and out without flip-flops.

    At each ``decide`` the importance ``I <- decay * I + (1 - decay) * |theta * grad|`` is
    updated (the first-order saliency of SNIP, Lee et al. 2019, and of Molchanov et al. 2019,
    "Importance Estimation for Neural Network Pruning", smoothed over surgeries). Then

        ``drop_score = grow_score = I * (1 + hysteresis * [weight is ALIVE])``,

    so a sedated weight must beat an incumbent by the relative margin ``hysteresis`` to take
    its place (a Schmitt trigger: the mask no longer flips on noise). Sparsity follows the
    cubic schedule from ``start`` to ``end`` (:func:`~emrakul.controllers.schedules.cubic`);
    between them every surgery offers ``churn`` of the alive weights for swapping. Weights
    leave to SEDATED.

    Args:
      decay: EMA decay in [0, 1) (traced in the state).
      hysteresis: incumbents' bonus, ``>= 0`` (traced in the state).
      start: fraction of training at which pruning starts (static).
      end: fraction at which the target is reached and swapping stops (static).
      churn: fraction of alive weights offered for swapping per surgery, in [0, 1].

    Returns:
      A controller with ``drop_to=SEDATED``.

    Raises:
      ValueError: bad fractions, ``decay`` outside [0, 1) or a negative ``hysteresis``.
    """
    start, end = _check_window(start, end)
    decay = _check_unit("decay", decay, open_high=True)
    churn = _check_unit("churn", churn)
    hysteresis = _check_positive("hysteresis", hysteresis, allow_zero=True)

    def init(params: PyTree, observation: Observation, key=None) -> BreathingState:
        del key
        check_same_structure(params, observation.state, "params", "observation.state")
        importance = _scores(observation, lambda s: jnp.zeros(jnp.shape(s), jnp.float32))
        return BreathingState(
            importance=importance,
            decay=_scalar(decay),
            hysteresis=_scalar(hysteresis),
            churn=_scalar(churn),
        )

    def decide(obs: Observation, state: BreathingState) -> tuple[Decision, BreathingState]:
        num = _pruned_count(obs, "breathing")
        check_same_structure(obs.params, obs.grads, "observation.params", "observation.grads")
        check_same_structure(obs.params, state.importance, "observation.params", "importance")
        d = state.decay

        def ema(s, i, w, g):
            return d * i + (1.0 - d) * jnp.abs(w * g).astype(jnp.float32)

        importance = _scores(obs, ema, state.importance, obs.params, obs.grads)
        bonus = 1.0 + state.hysteresis
        scores = _scores(obs, lambda s, i: i * jnp.where(s == ALIVE, bonus, 1.0), importance)
        sparsity = schedules.cubic(obs.step, obs.total_steps, obs.target, start, end)
        swap = jnp.where(_between(obs.step, obs.total_steps, start, end), state.churn, 0.0)
        go = jnp.asarray(obs.step, jnp.float32) >= start * obs.total_steps
        decision = _decision(num, sparsity, swap, scores, scores, go)
        return decision, state._replace(importance=importance)

    return Controller(name="breathing", init=init, decide=decide, drop_to=SEDATED)
