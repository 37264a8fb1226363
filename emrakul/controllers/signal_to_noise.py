"""GSNR pruning: sedate the weights whose minibatch gradients disagree, wake those that agree.

Siems et al. 2021, "Dynamic Pruning of a Neural Network via Gradient Signal-to-Noise Ratio";
the GSNR ``E[g]^2 / Var[g]`` of a weight is from Liu et al. 2020, "Understanding Why Neural
Networks Generalize Well Through GSNR of Parameters". The churn is a traced scalar in the
controller state (changing it does not recompile); the schedule window is static.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree, check_same_structure
from emrakul.controllers import schedules
from emrakul.controllers.base import Controller, Decision, Observation, make_decision, state_scores
from emrakul.controllers.checks import check_unit, check_window, pruned_count
from emrakul.controllers.registry import register
from emrakul.surgery.lifecycle import SEDATED
from emrakul.vitals.signals import gsnr as gsnr_signal

_TIE = 1e-3
"""Weight of the magnitude tie-break added to GSNR scores (see :func:`gsnr`)."""


class GsnrState(NamedTuple):
    """State of :func:`gsnr`.

    Attributes:
      churn: float32, the fraction of alive weights offered for swapping per surgery.
    """

    churn: jax.Array


def _score(s: jax.Array, w: jax.Array, r: jax.Array) -> jax.Array:
    """``log1p(GSNR) + 1e-3 * |theta| / max|theta|`` of one layer."""
    del s
    mag = jnp.abs(w).astype(jnp.float32)
    tie = mag / (jnp.max(mag) + jnp.finfo(jnp.float32).tiny)
    return jnp.log1p(r.astype(jnp.float32)) + _TIE * tie


@register("gsnr")
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
    start, end = check_window(start, end)
    churn = check_unit("churn", churn)

    def init(params: PyTree, observation: Observation | None = None, key=None) -> GsnrState:
        del params, observation, key
        return GsnrState(churn=jnp.asarray(churn, jnp.float32))

    def decide(obs: Observation, state: GsnrState) -> tuple[Decision, GsnrState]:
        num = pruned_count(obs, "gsnr")
        if obs.vitals is None:
            raise ValueError(
                "gsnr needs observation.vitals (a VitalsState); the controller declares "
                "needs_vitals=True, so the wrapper must keep vital signs"
            )
        ratio = gsnr_signal(obs.vitals)
        check_same_structure(obs.params, ratio, "observation.params", "observation.vitals")
        scores = state_scores(obs, _score, obs.params, ratio)
        sparsity = schedules.cubic(obs.step, obs.total_steps, obs.target, start, end)
        swap = jnp.where(schedules.between(obs.step, obs.total_steps, start, end), state.churn, 0.0)
        go = jnp.asarray(obs.step, jnp.float32) >= start * obs.total_steps
        return make_decision(num, sparsity, swap, scores, scores, go), state

    return Controller(name="gsnr", init=init, decide=decide, drop_to=SEDATED, needs_vitals=True)
