"""The learned controller: the Magistrate decides a surgery plan from what it observes.

At every surgery the Magistrate observes the host (:func:`emrakul.agent.features.observe`:
per-unit vital signs, layer sizes, training health), its plan network
(:class:`~emrakul.agent.plan_network.PlanNetwork`) outputs a raw
:class:`~emrakul.controllers.plan_space.SurgeryPlan`, and
:func:`~emrakul.controllers.plan_decision.plan_decision` turns it into masks, exactly as for a
fixed plan. The network's parameters live in the controller state, so meta-training can vmap
over many policies in one compiled program (:mod:`emrakul.lab.meta.es`); a deployed policy is
the same controller with the trained parameters in its initial state.

A policy file (:func:`save_policy`) carries the parameters and a *signature* of everything
they depend on (observed features, plan fields, network sizes, the plan space); a file made
for another layout is refused with the difference named. ``magistrate()`` with no ``policy``
loads the policy shipped in the package (``emrakul/agent/policies/``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from flax import serialization

from emrakul.agent import features
from emrakul.agent.plan_network import GLOBAL_OUTPUTS, LAYER_OUTPUTS, PlanNetwork
from emrakul.controllers.base import Controller, Observation
from emrakul.controllers.plan_decision import PlanState, init_state, plan_decision, region_layout
from emrakul.controllers.plan_space import PlanSpace, SurgeryPlan, zero_plan
from emrakul.controllers.registry import register
from emrakul.surgery.lifecycle import SEDATED

FORMAT = "emrakul-magistrate-plan/1"
_POLICIES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "agent", "policies")
SHIPPED = os.path.join(_POLICIES, "magistrate.msgpack")
#: The policies shipped in the package by name: ``""`` the classifier policy (issue 17),
#: ``"stream"`` the one meta-trained on permuted-label streams with continual backprop (issue 18).
SHIPPED_POLICIES = {"": "magistrate.msgpack", "stream": "magistrate_stream.msgpack"}


def policy_path(policy: str) -> str:
    """The file of ``policy``: a shipped policy's name (:data:`SHIPPED_POLICIES`) or a path."""
    if policy == "":
        return SHIPPED  # looked up at call time (tests substitute it)
    if policy in SHIPPED_POLICIES:
        return os.path.join(_POLICIES, SHIPPED_POLICIES[policy])
    return policy


class PolicyState(NamedTuple):
    """The network parameters, the plan's saliency EMAs and the last raw plan (for tracing)."""

    params: Any
    inner: PlanState
    plan: SurgeryPlan


def plan_of(network: PlanNetwork, params: Any, obs: Observation) -> SurgeryPlan:
    """The raw plan the network decides for one observation (the host's own regions)."""
    layout = region_layout(obs)
    agent_obs = features.observe(obs, layout, layout.num_regions, layout.num_layers)
    return network.apply(params, agent_obs).plan


def policy_controller(
    space: PlanSpace, params: Any, network: PlanNetwork | None = None, name: str = "magistrate"
) -> Controller:
    """The Magistrate with ``params`` (written into its initial state) in ``space``."""
    network = network or PlanNetwork()

    def init(p: Any, observation: Observation, key=None) -> PolicyState:
        del p, key
        zero = zero_plan(len(observation.layer_size), region_layout(observation).num_regions)
        return PolicyState(params, init_state(observation), zero)

    def decide(obs: Observation, state: PolicyState):
        plan = plan_of(network, state.params, obs)
        decision, inner = plan_decision(obs, plan, state.inner, space)
        return decision, state._replace(inner=inner, plan=plan)

    return Controller(name=name, init=init, decide=decide, drop_to=SEDATED, needs_vitals=True,
                      needs_activations=True)  # fmt: skip


def signature(network: PlanNetwork, space: PlanSpace) -> dict[str, Any]:
    """Everything a policy's parameters depend on: observation and plan layout, sizes, space."""
    return {
        "region_features": list(features.FEATURE_NAMES),
        "global_features": list(features.GLOBAL_NAMES),
        "layer_features": list(features.LAYER_FEATURE_NAMES),
        "plan_fields": list(SurgeryPlan._fields),
        "layer_outputs": list(LAYER_OUTPUTS),
        "global_outputs": list(GLOBAL_OUTPUTS),
        "network": {
            "embed_dim": network.embed_dim,
            "hidden_dim": network.hidden_dim,
            "message_rounds": network.message_rounds,
        },
        "space": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(space).items()
        },
    }


def save_policy(path: str, params: Any, network: PlanNetwork, space: PlanSpace, **info) -> None:
    """Writes ``params`` with their signature (and free-form ``info``) as msgpack."""
    payload = {"format": FORMAT, "signature": signature(network, space), "info": info,
               "params": serialization.to_state_dict(params)}  # fmt: skip
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(payload))


def load_policy(path: str) -> tuple[Any, PlanNetwork, PlanSpace, dict[str, Any]]:
    """``(params, network, space, info)`` of a policy file.

    Raises:
      ValueError: no file, not a Magistrate plan policy, or a policy made for another
        observation or action layout (the differing entries named).
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"no Magistrate policy at {path!r} (train one with experiments.train_agent)"
        )
    with open(path, "rb") as f:
        payload = serialization.msgpack_restore(f.read())
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Magistrate plan policy (format {FORMAT})")
    sig = payload["signature"]
    network = PlanNetwork(**sig["network"])
    space_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in sig["space"].items()}
    space = PlanSpace(**space_kwargs)
    want = signature(network, space)
    # a space field added after the file was written takes its default (the old behaviour)
    sig = {**sig, "space": {**want["space"], **sig["space"]}}
    diff = sorted(k for k in want if want[k] != sig.get(k))
    if diff:
        raise ValueError(
            f"{path} was made for another observation or action layout: {diff} differ "
            "(retrain it with this version's experiments.train_agent)"
        )
    return payload["params"], network, space, dict(payload.get("info", {}))


#: The plan-space fields a deployment may override (the schedule, not what the policy reads).
DEPLOY_FIELDS = ("start", "end", "lyse_at_end", "churn_after_end")


@register("magistrate")
def magistrate(policy: str = "", **schedule: Any) -> Controller:
    """The learned controller from a policy file (default: the policy shipped in the package).

    Args:
      policy: the policy file, or the name of a shipped one (:data:`SHIPPED_POLICIES`: empty for
        the classifier policy, ``"stream"`` for the stream policy).
      **schedule: overrides of the policy's plan-space schedule (:data:`DEPLOY_FIELDS`), e.g.
        ``start=0.0, end=0.1, lyse_at_end=False, churn_after_end=True`` to deploy it on a
        stream: prune early, then keep swapping and keep sedated weights wakeable.

    Raises:
      ValueError: no such file, a file made for another layout, or an unknown override.
    """
    unknown = sorted(set(schedule) - set(DEPLOY_FIELDS))
    if unknown:
        raise ValueError(f"magistrate: unknown overrides {unknown}; allowed: {DEPLOY_FIELDS}")
    params, network, space, _ = load_policy(policy_path(policy))
    return policy_controller(dataclasses.replace(space, **schedule), params, network)
