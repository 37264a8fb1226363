"""Rolling out the Magistrate's plan policy on host runs, with exploration held per phase.

A host run is split into ``phases`` equal phases. At the start of each phase the policy observes
the host (the same observation a deployed Magistrate gets), samples a raw plan from a Gaussian
around its output (``std`` per plan field), and the host trains the whole phase under that plan
(the ``planned`` controller reads it from its state): exploration noise is held for a phase,
not redrawn at every surgery, and nothing irreversible is sampled (lysis follows from sustained
sedation). The episode's return is the validation accuracy of the whole validation split at
the end of training: the terminal objective at the exact final sparsity.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from emrakul import wrapper as wrap_mod
from emrakul.agent import features
from emrakul.agent.plan_network import PlanNetwork
from emrakul.agent.spaces import AgentObs
from emrakul.controllers.plan_space import SurgeryPlan
from emrakul.lab.loop import RunState, Trainer
from emrakul.vitals import regions as rg


class PhaseStep(NamedTuple):
    """What one phase of one host records (batched: leading axes)."""

    obs: AgentObs
    plan: SurgeryPlan  # the sampled raw plan (padded)
    log_prob: jax.Array
    value: jax.Array


def plan_mask(obs: AgentObs) -> SurgeryPlan:
    """1.0 where a plan entry acts on the host (valid layers and regions, the globals), else 0."""
    lv = obs.layer_valid.astype(jnp.float32)
    rv = obs.region_valid.astype(jnp.float32)
    one = jnp.float32(1.0)
    return SurgeryPlan(lv, jnp.broadcast_to(lv[:, None], (lv.shape[0], 4)), lv, lv, lv, lv,
                       one, one, one, one, rv)  # fmt: skip


def log_prob(plan: SurgeryPlan, mean: SurgeryPlan, log_std: SurgeryPlan, obs: AgentObs):
    """Sum over the acting entries of the Gaussian log-density of ``plan``."""
    mask = plan_mask(obs)

    def one(x, mu, ls, m):
        z = (x - mu) * jnp.exp(-ls)
        return jnp.sum(m * (-0.5 * z**2 - ls - 0.5 * jnp.log(2 * jnp.pi)))

    return sum(jax.tree.leaves(jax.tree.map(one, plan, mean, log_std, mask)))


def entropy(log_std: SurgeryPlan, obs: AgentObs) -> jax.Array:
    """The Gaussian's entropy over the acting entries."""
    mask = plan_mask(obs)
    per = jax.tree.map(lambda ls, m: jnp.sum(m * (ls + 0.5 * jnp.log(2 * jnp.pi * jnp.e))),
                       log_std, mask)  # fmt: skip
    return sum(jax.tree.leaves(per))


def broadcast_std(log_std: dict[str, jax.Array], like: SurgeryPlan) -> SurgeryPlan:
    """One log-std per plan field, broadcast to the field's shape."""
    return SurgeryPlan(**{f: jnp.broadcast_to(log_std[f], jnp.shape(getattr(like, f)))
                          for f in SurgeryPlan._fields})  # fmt: skip


def _observe(trainer: Trainer, state: RunState, layout, r_max: int, l_max: int) -> AgentObs:
    val = trainer.evaluate(state, "monitor")["accuracy"]
    health = state.opt_state.health._replace(val_accuracy=val)
    obs = wrap_mod.state_observation(state.params, state.opt_state, health=health,
                                     total_steps=trainer.num_intervals * trainer.steps_per_interval,
                                     activations=trainer.activations(state))  # fmt: skip
    return features.observe(obs, layout, r_max, l_max)


def _write(state: RunState, plan: SurgeryPlan) -> RunState:
    """Writes the host-sized part of a padded plan into the planned controller's state."""
    ctrl = state.opt_state.controller
    own = ctrl.plan
    sized = SurgeryPlan(
        *(p[tuple(slice(0, n) for n in jnp.shape(o))] if jnp.ndim(o) else p
          for p, o in zip(plan, own, strict=True))
    )  # fmt: skip
    return state._replace(opt_state=state.opt_state._replace(controller=ctrl._replace(plan=sized)))


def rollout_host(
    trainer: Trainer,
    layout: rg.RegionLayout,
    network: PlanNetwork,
    params: Any,
    log_std: dict[str, jax.Array],
    phases: int,
    r_max: int,
    l_max: int,
    host_key: jax.Array,
    noise_key: jax.Array,
) -> tuple[PhaseStep, jax.Array]:
    """One host run (``host_key``: initialisation and data order), phases sampled with
    ``noise_key``; returns the ``[phases]`` records and the final validation accuracy."""
    if trainer.num_intervals % phases:
        raise ValueError(f"{phases} phases must divide the run's {trainer.num_intervals} intervals")
    per_phase = trainer.num_intervals // phases

    def phase(state: RunState, k: jax.Array):
        obs = _observe(trainer, state, layout, r_max, l_max)
        out = network.apply(params, obs)
        std = broadcast_std(log_std, out.plan)
        keys = jax.random.split(jax.random.fold_in(noise_key, k), len(SurgeryPlan._fields))
        noise = SurgeryPlan(*(jax.random.normal(kk, jnp.shape(x))
                              for kk, x in zip(keys, out.plan, strict=True)))  # fmt: skip
        plan = jax.tree.map(lambda m, s, e: m + jnp.exp(s) * e, out.plan, std, noise)
        step = PhaseStep(obs, plan, log_prob(plan, out.plan, std, obs), out.value)
        state, _ = trainer.run(_write(state, plan), per_phase)
        return state, step

    state, steps = jax.lax.scan(phase, trainer.init(host_key), jnp.arange(phases))
    return steps, trainer.evaluate(state, "val")["accuracy"]
