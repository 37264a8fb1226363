"""Breathing: EMA importance with hysteresis, so the mask breathes in and out without flip-flops.

The importance is the first-order saliency ``|theta * grad|`` (Lee et al. 2019, "SNIP";
Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning") smoothed over
surgeries; incumbents get a relative bonus (a Schmitt trigger). Decay, hysteresis and churn are
traced scalars in the controller state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree, check_same_structure
from emrakul.controllers import schedules
from emrakul.controllers.base import Controller, Decision, Observation, make_decision, state_scores
from emrakul.controllers.checks import check_positive, check_unit, check_window, pruned_count
from emrakul.controllers.registry import register
from emrakul.surgery.lifecycle import ALIVE, SEDATED


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


@register("breathing")
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
    start, end = check_window(start, end)
    decay = check_unit("decay", decay, open_high=True)
    churn = check_unit("churn", churn)
    hysteresis = check_positive("hysteresis", hysteresis, allow_zero=True)

    def init(params: PyTree, observation: Observation, key=None) -> BreathingState:
        del key
        check_same_structure(params, observation.state, "params", "observation.state")
        importance = state_scores(observation, lambda s: jnp.zeros(jnp.shape(s), jnp.float32))
        return BreathingState(
            importance=importance,
            decay=jnp.asarray(decay, jnp.float32),
            hysteresis=jnp.asarray(hysteresis, jnp.float32),
            churn=jnp.asarray(churn, jnp.float32),
        )

    def decide(obs: Observation, state: BreathingState) -> tuple[Decision, BreathingState]:
        num = pruned_count(obs, "breathing")
        check_same_structure(obs.params, obs.grads, "observation.params", "observation.grads")
        check_same_structure(obs.params, state.importance, "observation.params", "importance")
        d = state.decay

        def ema(s, i, w, g):
            return d * i + (1.0 - d) * jnp.abs(w * g).astype(jnp.float32)

        importance = state_scores(obs, ema, state.importance, obs.params, obs.grads)
        bonus = 1.0 + state.hysteresis
        scores = state_scores(obs, lambda s, i: i * jnp.where(s == ALIVE, bonus, 1.0), importance)
        sparsity = schedules.cubic(obs.step, obs.total_steps, obs.target, start, end)
        swap = jnp.where(schedules.between(obs.step, obs.total_steps, start, end), state.churn, 0.0)
        go = jnp.asarray(obs.step, jnp.float32) >= start * obs.total_steps
        decision = make_decision(num, sparsity, swap, scores, scores, go)
        return decision, state._replace(importance=importance)

    return Controller(name="breathing", init=init, decide=decide, drop_to=SEDATED)
