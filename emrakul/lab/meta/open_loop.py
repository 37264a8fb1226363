"""The open-loop ceiling: one fixed surgery plan per host, tuned by evolution strategies.

The genome is a :class:`~emrakul.controllers.plan_space.SurgeryPlan` without its per-region
biases (units of a freshly initialised network are exchangeable, so a fixed bias per unit
cannot carry over between seeds): per-layer allocation, score mix, decay, hysteresis, churn and
regrowth, and the global schedule shape, window and temperature. Whatever such a plan gains
over the neutral heuristic needs no observation at all; a closed-loop controller has to beat it
to show that watching vital signs matters (DESIGN.md).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from emrakul.controllers.plan_space import PlanSpace, SurgeryPlan, zero_plan
from emrakul.controllers.planned import plan_controller
from emrakul.lab.loop import RunState, make_train
from emrakul.lab.meta.es import HostGroup

FIELDS = tuple(f for f in SurgeryPlan._fields if f != "bias")


def zero_genome(num_layers: int) -> dict[str, jnp.ndarray]:
    """The neutral open-loop genome (every plan field but ``bias``, zeros)."""
    plan = zero_plan(num_layers, 1)
    return {f: getattr(plan, f) for f in FIELDS}


def genome_plan(genome: dict, num_regions: int) -> SurgeryPlan:
    """The plan of a genome (zero region biases)."""
    return SurgeryPlan(**genome, bias=jnp.zeros((num_regions,), jnp.float32))


def write_plan(state: RunState, genome: dict) -> RunState:
    """``state`` with the genome's plan in its ``planned`` controller state."""
    ctrl = state.opt_state.controller
    plan = genome_plan(genome, ctrl.plan.bias.shape[0])
    return state._replace(opt_state=state.opt_state._replace(controller=ctrl._replace(plan=plan)))


def plan_group(config: ml_collections.ConfigDict, space: PlanSpace, name: str = "") -> HostGroup:
    """A host group whose hosts follow the genome's plan."""
    return HostGroup(make_train(config, plan_controller(space)), write_plan, name)
