"""The learned controller's decision rule: an agent action as corrections to GMP.

Following DESIGN.md ("start from the best heuristic; fix the endpoint, learn the path"), an
:class:`~emrakul.agent.networks.AgentAction` is read as corrections to gradual magnitude pruning
(Zhu & Gupta 2017), so that the neutral action *is* GMP:

* ``budget`` [L] in (0, 1): layer ``l``'s sparsity is the cubic schedule's ``s_gmp`` plus
  ``(2 b_l - 1) * span * target_l * (1 - p)`` (``p`` the schedule's progress), clipped to
  [0, 0.999]. At ``b = 0.5`` it is GMP; from ``end`` on (``p = 1``) it is exactly the target.
* ``regrow`` in (0, 1): churn ``regrow_span * max(0, 2 r - 1) * (1 - p)`` swaps that fraction of
  alive weights for the best sedated ones (waking by own magnitude); 0 at the neutral 0.5.
* ``temperature`` > 0: Gumbel noise of scale ``max(0, log T)`` on the log-magnitude scores
  (exploration); none at the neutral 1.
* ``region`` [R] in {keep, sedate, wake, lyse}: sedate/lyse regions are cut first, wake regions
  regrow first, lyse marks weights for lysis (permanent; they never return); keep regions follow
  the magnitude ranking. The per-layer counts still come from the budgets.

Weights leave ALIVE to SEDATED (they keep learning and may wake), unless lysed by the agent. With
the neutral action the forward network follows GMP exactly.

``action_controller`` takes the action from its state (the environment writes it before each
surgery); a frozen policy deployed in any training loop (:func:`deployed`) computes the action
from its observation instead, through the same :func:`decide_from_action`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul.agent.networks import LYSE, SEDATE, WAKE, AgentAction
from emrakul.controllers import schedules
from emrakul.controllers.base import Controller, Decision, Observation, make_decision
from emrakul.controllers.registry import register
from emrakul.surgery.lifecycle import SEDATED
from emrakul.vitals import regions as rg

_PRIORITY = 1e6  # score offset of agent decisions (log-magnitudes are within +-60)


class ActionState(NamedTuple):
    """The controller state: the action to apply at the next surgery."""

    action: AgentAction


def neutral_action(num_layers: int, r_max: int) -> AgentAction:
    """The action that reproduces GMP: budget 0.5, temperature 1, regrow 0.5, keep everywhere."""
    return AgentAction(
        budget=jnp.full((num_layers,), 0.5, jnp.float32),
        temperature=jnp.float32(1.0),
        regrow=jnp.float32(0.5),
        region=jnp.zeros((r_max,), jnp.int32),
    )


def decide_from_action(
    obs: Observation,
    action: AgentAction,
    layout: rg.RegionLayout,
    *,
    start: float,
    end: float,
    budget_span: float,
    regrow_span: float,
) -> Decision:
    """The surgery decision of ``action`` (module docstring)."""
    num = len(obs.layer_size)
    target = jnp.asarray(obs.target, jnp.float32)
    p = schedules.progress(obs.step, obs.total_steps, start, end)
    s_gmp = schedules.cubic(obs.step, obs.total_steps, target, start, end)
    budget = action.budget[:num]
    sparsity = jnp.clip(s_gmp + (2 * budget - 1) * budget_span * target * (1 - p), 0.0, 0.999)
    churn = regrow_span * jnp.maximum(0.0, 2 * action.regrow - 1) * (1 - p)
    noise_scale = jnp.maximum(jnp.log(action.temperature), 0.0)
    code = action.region[: layout.num_regions]
    per_weight = rg.broadcast(code, layout, fill=0)
    leaves = jax.tree.leaves(obs.params)
    keys = jax.random.split(obs.key, len(leaves))
    noise = jax.tree.unflatten(
        jax.tree.structure(obs.params),
        [jax.random.gumbel(k, jnp.shape(w)) for k, w in zip(keys, leaves, strict=True)],
    )

    def drop(w, c, n):
        base = jnp.log(jnp.abs(w) + 1e-12) + noise_scale * n
        return base - _PRIORITY * ((c == SEDATE) | (c == LYSE))

    def grow(w, c):
        return jnp.log(jnp.abs(w) + 1e-12) + _PRIORITY * (c == WAKE)

    return make_decision(
        num,
        sparsity,
        churn,
        jax.tree.map(drop, obs.params, per_weight, noise),
        jax.tree.map(grow, obs.params, per_weight),
        True,
    )._replace(lyse=jax.tree.map(lambda c: c == LYSE, per_weight))


def _controller(
    name, init, choose, start, end, budget_span, regrow_span, needs_activations=False
) -> Controller:
    """A controller applying ``choose(obs, state) -> (action, layout)`` via
    :func:`decide_from_action`; both learned-controller variants share it."""

    def decide(obs: Observation, state):
        action, layout = choose(obs, state)
        decision = decide_from_action(
            obs,
            action,
            layout,
            start=start,
            end=end,
            budget_span=budget_span,
            regrow_span=regrow_span,
        )
        return decision, state

    return Controller(
        name=name,
        init=init,
        decide=decide,
        drop_to=SEDATED,
        regrow_lysed=False,
        needs_vitals=True,
        needs_activations=needs_activations,
    )


def action_controller(
    layout: rg.RegionLayout,
    r_max: int,
    l_max: int | None = None,
    *,
    start: float = 0.2,
    end: float = 0.8,
    budget_span: float = 0.5,
    regrow_span: float = 0.2,
) -> Controller:
    """A controller that applies the action held in its state (written by the environment).

    Args:
      layout: the host's ``Units`` region layout over its pruned kernels.
      r_max: the padded region count of the actions.
      l_max: the padded layer count of the actions (default: the host's own).
      start, end: the GMP schedule the action corrects (fractions of training).
      budget_span: how far (as a fraction of the target) a budget can move a layer early on.
      regrow_span: the largest churn (at ``regrow -> 1``, early in training).
    """

    def init(params, observation: Observation, key=None) -> ActionState:
        del params, key
        return ActionState(neutral_action(l_max or len(observation.layer_size), r_max))

    def choose(obs: Observation, state: ActionState):
        return state.action, layout

    return _controller("magistrate_action", init, choose, start, end, budget_span, regrow_span)


def deployed(
    policy_params,
    *,
    start: float = 0.2,
    end: float = 0.8,
    budget_span: float = 0.5,
    regrow_span: float = 0.2,
    agent_kwargs: dict | None = None,
    drop_features: tuple[str, ...] = (),
) -> Controller:
    """A trained Magistrate, frozen, as a controller usable through ``emrakul.wrap`` anywhere.

    At every surgery it observes the host (:func:`emrakul.agent.features.observe`, on the host's
    own ``Units`` regions: the networks ignore padding, so no padding is needed here), runs the
    actor only (decentralised execution: no critic), takes the policy's deterministic action
    (:func:`emrakul.agent.networks.mode`) and applies it with :func:`decide_from_action`.

    Args:
      policy_params: the agent's Flax variables (e.g. from :func:`load_policy`).
      start, end, budget_span, regrow_span: as in :func:`action_controller` (use the values the
        policy was trained with).
      agent_kwargs: the :class:`~emrakul.agent.networks.Agent` hyperparameters it was trained
        with (defaults otherwise).
      drop_features: observation groups the policy was trained without (ablations).
    """
    from emrakul.agent import features
    from emrakul.agent import networks as nw
    from emrakul.masks.structures import Units

    agent = nw.Agent(**(agent_kwargs or {}))

    def init(params, observation: Observation, key=None) -> tuple:
        del params, observation, key
        return ()

    def choose(obs: Observation, state: tuple):
        layout = rg.layout(obs.params, Units(-1))
        agent_obs = features.observe(
            obs, layout, layout.num_regions, layout.num_layers, tuple(drop_features)
        )
        policy = agent.apply(policy_params, agent_obs, method=nw.Agent.actor)
        return nw.mode(policy, agent_obs), layout

    return _controller(
        "magistrate", init, choose, start, end, budget_span, regrow_span, needs_activations=True
    )


def load_policy(path: str):
    """The agent variables saved by ``experiments.train_agent`` (``WORKDIR/agent``)."""
    import os

    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ValueError(
            f"no trained Magistrate at '{path}'; train one with "
            "`python -m experiments.train_agent --workdir DIR` and pass DIR/agent"
        )
    return ocp.StandardCheckpointer().restore(path)


@register("magistrate_v0")
def magistrate_v0(policy: str = "", drop_features: str = "", **kwargs) -> Controller:
    """The learned controller from a saved policy (``policy``: ``experiments.train_agent``'s
    ``WORKDIR/agent``); ``drop_features``: comma-separated observation groups the policy was
    trained without; other keyword arguments as in :func:`deployed`.

    Raises:
      ValueError: no policy path, or nothing saved there.
    """
    if not policy:
        raise ValueError(
            "the magistrate controller needs a trained policy: set "
            "controllers.magistrate.policy to experiments.train_agent's WORKDIR/agent"
        )
    drop = tuple(d.strip() for d in drop_features.split(",") if d.strip())
    return deployed(load_policy(policy), drop_features=drop, **kwargs)
