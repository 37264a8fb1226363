"""ReDo (Sokar, Agarwal, Castro & Evci 2023, "The Dormant Neuron Phenomenon in Deep
Reinforcement Learning", ICML): recycle dormant units.

Every ``period`` host steps, the hidden units whose ReDo score ``E|h_i| / mean_j E|h_j|`` (the
observation's activation statistics) is at most ``tau`` are re-initialised: fresh incoming
weights, zero outgoing weights, restarted optimizer moments
(:func:`~emrakul.controllers.unit_reset.reinit_units`). It never prunes: it is the dense
network's remedy (``needs_activations``). The defaults are the paper's (recycling every 1000
updates, ``tau = 0.1``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.controllers.base import Controller, Observation
from emrakul.controllers.checks import check_positive
from emrakul.controllers.registry import register
from emrakul.controllers.unit_reset import hidden_layers, hold, reinit_units, unit_scores


class RedoState(NamedTuple):
    """``last``: int32, the host step of the last recycling (``-period`` before the first)."""

    last: jax.Array


@register("redo")
def redo(tau: float = 0.1, period: int = 1000) -> Controller:
    """ReDo with the paper's defaults (module docstring).

    Args:
      tau: the dormancy threshold on the ReDo score (``>= 0``).
      period: host steps between recyclings (the first one after ``period`` steps).

    Returns:
      A dense controller whose decisions rewrite dormant units (``needs_activations``).

    Raises:
      ValueError: a negative ``tau`` or a ``period`` below 1.
    """
    tau = check_positive("tau", tau, allow_zero=True)
    if int(period) < 1:
        raise ValueError(f"period must be >= 1 host step, got {period}")
    period = int(period)

    def init(params: PyTree, observation: Observation | None = None, key=None) -> RedoState:
        del observation, key
        hidden_layers(params)  # a clear error on a tree it cannot recycle
        return RedoState(last=jnp.int32(0))

    def decide(obs: Observation, state: RedoState):
        fire = obs.step - state.last >= period
        marked = {
            name: fire & (unit_scores(obs, name) <= tau) for name, _ in hidden_layers(obs.params)
        }
        rewrite = reinit_units(obs.params, marked, obs.key)
        last = jnp.where(fire, jnp.asarray(obs.step, jnp.int32), state.last)
        return hold(obs, rewrite), RedoState(last=last)

    return Controller(name="redo", init=init, decide=decide, needs_activations=True)
