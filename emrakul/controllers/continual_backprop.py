"""Continual backprop (Dohare et al. 2024, "Loss of plasticity in deep continual learning",
Nature 632): keep a network plastic by re-initialising a small fraction of its least useful
mature units, forever.

Each hidden unit ``i`` carries a contribution utility, a running average of
``|h_i| * sum_k |w_ik|`` (its mean activation times its outgoing weights' magnitude), and an
age. At every surgery the units older than ``maturity`` steps accrue ``replacement_rate`` units
per step and eligible unit; whole units are paid out by re-initialising the lowest-utility
mature ones (:func:`~emrakul.controllers.unit_reset.reinit_units`: fresh incoming weights, zero
bias and outgoing weights, restarted moments), whose utility and age restart at zero.

Here the utility is updated once per surgery interval from the training loop's activation
statistics (the observation's ReDo score, the mean ``|h_i|`` over the monitored inputs divided by
the layer's mean; the per-layer scale does not change the ranking inside a layer), with the
decay raised to the interval's power, rather than on every step's minibatch as in the paper.
It never prunes: it is the dense network's remedy (``needs_activations``). Combined with a
pruner (:mod:`emrakul.controllers.with_remedy`) it counts only ALIVE outgoing weights and
replaces only live units (:func:`~emrakul.controllers.unit_reset.live_units`): a unit the pruner
cut off has utility 0 and would otherwise take every replacement, uselessly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.controllers.base import Controller, Observation
from emrakul.controllers.checks import check_positive, check_unit
from emrakul.controllers.registry import register
from emrakul.controllers.unit_reset import (
    hidden_layers,
    hold,
    live_units,
    lowest,
    outgoing_magnitude,
    reinit_units,
    unit_count,
    unit_scores,
)


class ContinualBackpropState(NamedTuple):
    """Per hidden layer (a tuple in stack order): utility ``[units]``, age ``[units]`` (host
    steps since the unit was created) and the fractional units owed ``[]``."""

    utility: tuple
    age: tuple
    owed: tuple


@register("continual_backprop")
def continual_backprop(
    replacement_rate: float = 1e-4, decay: float = 0.99, maturity: int = 100
) -> Controller:
    """Continual backprop with the paper's defaults (module docstring).

    Args:
      replacement_rate: units re-initialised per host step and eligible unit (``rho``).
      decay: the utility's running-average decay per host step (``eta``).
      maturity: host steps a new unit is protected for (``m``).

    Returns:
      A dense controller whose decisions rewrite units (``needs_activations``).

    Raises:
      ValueError: a rate or decay outside [0, 1), a negative maturity.
    """
    rate = check_unit("replacement_rate", replacement_rate, open_high=True)
    decay = check_unit("decay", decay, open_high=True)
    maturity = check_positive("maturity", maturity, allow_zero=True)

    def init(params: PyTree, observation: Observation | None = None, key=None):
        del observation, key
        layers = hidden_layers(params)
        zeros = tuple(jnp.zeros((unit_count(params, p),), jnp.float32) for p, _ in layers)
        ages = tuple(jnp.zeros((unit_count(params, p),), jnp.int32) for p, _ in layers)
        return ContinualBackpropState(zeros, ages, tuple(jnp.float32(0.0) for _ in layers))

    def decide(obs: Observation, state: ContinualBackpropState):
        steps = jnp.asarray(1 if obs.interval is None else obs.interval, jnp.float32)
        d = jnp.power(jnp.float32(decay), steps)
        marked, utility, age, owed = {}, [], [], []
        for j, (name, consumer) in enumerate(hidden_layers(obs.params)):
            outgoing = outgoing_magnitude(obs.params, name, consumer, obs.state)
            u = d * state.utility[j] + (1.0 - d) * unit_scores(obs, name) * outgoing
            a = state.age[j] + steps.astype(jnp.int32)
            mature = (a > maturity) & live_units(obs.params, obs.state, name, consumer)
            due = state.owed[j] + rate * steps * jnp.sum(mature)
            pay = jnp.floor(due + 1e-6)  # 0.01 * 20 * 5 is 0.99999 in float32
            out = lowest(u, mature, pay)
            marked[name] = out
            utility.append(jnp.where(out, 0.0, u))
            age.append(jnp.where(out, 0, a))
            owed.append(due - jnp.sum(out))
        rewrite = reinit_units(obs.params, marked, obs.key)
        new = ContinualBackpropState(tuple(utility), tuple(age), tuple(owed))
        return hold(obs, rewrite), new

    return Controller(name="continual_backprop", init=init, decide=decide, needs_activations=True)
