"""Harmonic annealing: an oscillating sparsity target whose swings die out.

Oscillating sparsity as a regulariser follows the cyclical-pruning literature (Srinivas et al.
2022, "Cyclical Pruning for Sparse Neural Networks"); sedated weights wake by their own
accumulated magnitude, in the spirit of synaptic-flow conservation (Tanaka et al. 2020,
"Pruning neural networks without any data by iteratively conserving synaptic flow"). Period and
amplitude are traced scalars in the controller state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.controllers import schedules
from emrakul.controllers.base import Controller, Decision, Observation, make_decision, state_scores
from emrakul.controllers.checks import check_positive, check_unit, check_window, pruned_count
from emrakul.controllers.registry import register
from emrakul.surgery.lifecycle import SEDATED


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


@register("harmonic")
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
    start, end = check_window(start, end)
    amplitude = check_unit("amplitude", amplitude)
    period = check_positive("period", period)

    def init(params: PyTree, observation: Observation | None = None, key=None) -> HarmonicState:
        del params, observation, key
        return HarmonicState(
            period=jnp.asarray(period, jnp.float32), amplitude=jnp.asarray(amplitude, jnp.float32)
        )

    def decide(obs: Observation, state: HarmonicState) -> tuple[Decision, HarmonicState]:
        num = pruned_count(obs, "harmonic")
        sparsity = harmonic_sparsity(
            obs.step, obs.total_steps, obs.target, state.period, state.amplitude, start, end
        )
        mag = state_scores(obs, lambda s, w: jnp.abs(w), obs.params)
        return make_decision(num, sparsity, 0.0, mag, mag, True), state

    return Controller(name="harmonic", init=init, decide=decide, drop_to=SEDATED)
