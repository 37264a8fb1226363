"""``planned``: a fixed (state-independent) surgery plan as a controller.

The plan lives in the controller state, so a tuner can write any plan into a host's state
before training (an evolution-strategies search over plans vmaps over them: one compiled
program for the whole population) and the same code serves the zero plan, which reproduces the
neutral heuristic exactly. The learned Magistrate (:mod:`emrakul.controllers.magistrate`)
decides a plan at every surgery instead, through the same
:func:`~emrakul.controllers.plan_decision.plan_decision`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from emrakul.controllers.base import Controller, Observation
from emrakul.controllers.plan_decision import PlanState, init_state, plan_decision, region_layout
from emrakul.controllers.plan_space import BASES, PlanSpace, SurgeryPlan, zero_plan
from emrakul.controllers.registry import register
from emrakul.surgery.lifecycle import SEDATED


class PlannedState(NamedTuple):
    """The plan to follow and the saliency EMAs."""

    plan: SurgeryPlan
    inner: PlanState


def plan_controller(
    space: PlanSpace, plan: SurgeryPlan | None = None, name="planned"
) -> Controller:
    """A controller that follows ``plan`` (default: the zero plan) in ``space``.

    Args:
      space: the static :class:`~emrakul.controllers.plan_space.PlanSpace`.
      plan: a raw plan (its layer and region counts must cover the host's); ``None``: zeros
        sized to the host.
      name: the controller's name.
    """

    def init(params: Any, observation: Observation, key=None) -> PlannedState:
        del params, key
        if plan is None:
            own = zero_plan(len(observation.layer_size), region_layout(observation).num_regions)
        else:
            own = SurgeryPlan(*(jnp.asarray(x, jnp.float32) for x in plan))
        return PlannedState(own, init_state(observation))

    def decide(obs: Observation, state: PlannedState):
        decision, inner = plan_decision(obs, state.plan, state.inner, space)
        return decision, state._replace(inner=inner)

    return Controller(name=name, init=init, decide=decide, drop_to=SEDATED, needs_vitals=True)


def save_plan(path: str, plan: SurgeryPlan, space: PlanSpace) -> None:
    """Writes a raw plan and the neutral heuristic and window of its space as ``.npz``."""
    arrays = {f: np.asarray(getattr(plan, f), np.float32) for f in SurgeryPlan._fields}
    np.savez(path, base=np.asarray(space.base), window=np.asarray([space.start, space.end]),
             **arrays)  # fmt: skip


def load_plan(path: str) -> tuple[SurgeryPlan, dict[str, Any]]:
    """A plan written by :func:`save_plan` and its space's ``base``, ``start`` and ``end``.

    Raises:
      ValueError: no such file, or a file that is not a surgery plan (missing fields named).
    """
    try:
        data = np.load(path)
    except FileNotFoundError as e:
        raise ValueError(f"no surgery plan at {path!r}") from e
    missing = [f for f in (*SurgeryPlan._fields, "base", "window") if f not in data]
    if missing:
        raise ValueError(f"{path} is not a surgery plan: it lacks {missing}")
    plan = SurgeryPlan(*(jnp.asarray(data[f], jnp.float32) for f in SurgeryPlan._fields))
    start, end = (float(x) for x in data["window"])
    return plan, {"base": str(data["base"]), "start": start, "end": end}


@register("planned")
def planned(
    base: str = "breathing", start: float = 0.2, end: float = 0.8, plan: str = ""
) -> Controller:
    """A fixed plan in the space of ``base`` (``"breathing"`` or ``"gmp"``) over
    ``start``-``end``: the zero plan, which trains exactly as that heuristic does, or the plan
    saved at ``plan`` (:func:`save_plan`; its own base and window then apply).

    Raises:
      ValueError: an unknown base, or a plan file that cannot be read.
    """
    fixed = None
    if plan:
        fixed, saved = load_plan(plan)
        base, start, end = saved["base"], saved["start"], saved["end"]
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    make = PlanSpace.breathing if base == "breathing" else PlanSpace.gmp
    return plan_controller(make(start=start, end=end), fixed)
