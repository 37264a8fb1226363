"""Meta-training the Magistrate by evolution strategies on its network's parameters.

The genome is the :class:`~emrakul.agent.plan_network.PlanNetwork`'s parameters; every host of
every group runs the Magistrate (:func:`emrakul.controllers.magistrate.policy_controller`) with
the genome in its controller state, so a generation (``population`` policies x groups x
``seeds`` hosts) is one compiled program (:mod:`emrakul.lab.meta.es`). The search starts from
zero heads (the neutral heuristic, exactly) and is scored by the hosts' validation accuracy at
the end of training: the terminal objective at the exact final sparsity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from emrakul import wrapper as wrap_mod
from emrakul.agent import features
from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.magistrate import policy_controller
from emrakul.controllers.plan_decision import region_layout
from emrakul.controllers.plan_space import PlanSpace
from emrakul.controllers.planned import plan_controller
from emrakul.controllers.with_remedy import WithRemedyState
from emrakul.lab.hosts import presets
from emrakul.lab.loop import RunState, make_train
from emrakul.lab.meta.es import HostGroup

#: The default meta-training population: MLP hidden widths (one group each).
POPULATION = ((64, 64), (32, 32, 32), (128,), (48, 48))


def parse_population(spec: str) -> tuple[tuple[int, ...], ...]:
    """``"64,64;32,32,32"`` -> ``((64, 64), (32, 32, 32))`` (empty: :data:`POPULATION`).

    Raises:
      ValueError: a group without widths or with a non-positive width.
    """
    if not spec.strip():
        return POPULATION
    groups = []
    for g in spec.split(";"):
        widths = tuple(int(w) for w in g.split(",") if w.strip())
        if not widths or min(widths) < 1:
            raise ValueError(f"population group {g!r} needs positive hidden widths")
        groups.append(widths)
    return tuple(groups)


def group_configs(
    config: ml_collections.ConfigDict, spec: str
) -> list[tuple[str, ml_collections.ConfigDict]]:
    """``(name, config)`` per ``;``-separated group of ``spec``: hidden widths (``"64,64"``: the
    config's host with those widths) or a host preset name (``"default"``:
    :data:`emrakul.lab.hosts.presets.HOSTS`, its own run length and interval). Empty:
    :data:`POPULATION`.

    Raises:
      ValueError: a group that is neither.
    """
    out = []
    for g in spec.split(";") if spec.strip() else [",".join(map(str, w)) for w in POPULATION]:
        g = g.strip()
        if g in presets.HOSTS:
            c = presets.host_config(config, g)
            c.prune.sparsity, c.prune.distribution = (
                config.prune.sparsity,
                config.prune.distribution,
            )
            out.append((g, c))
            continue
        (widths,) = parse_population(g)
        c = config.copy_and_resolve_references()
        c.host.width = widths
        out.append((g, c))
    return out


def template_params(config: ml_collections.ConfigDict, network: PlanNetwork, seed: int = 0):
    """Fresh network parameters (zero heads), from a probe observation of ``config``'s host."""
    trainer = make_train(config, plan_controller(PlanSpace()))
    state = trainer.init(jax.random.PRNGKey(0))
    obs = wrap_mod.state_observation(state.params, state.opt_state, total_steps=1)
    layout = region_layout(obs)
    agent_obs = features.observe(obs, layout, layout.num_regions, layout.num_layers)
    return network.init(jax.random.PRNGKey(seed), agent_obs)


def write_params(state: RunState, params: Any) -> RunState:
    """``state`` with ``params`` in its Magistrate's controller state (also inside
    :func:`~emrakul.controllers.with_remedy.with_remedy`); any host state with an ``opt_state``."""
    ctrl = state.opt_state.controller
    if isinstance(ctrl, WithRemedyState):
        ctrl = ctrl._replace(pruner=ctrl.pruner._replace(params=params))
    else:
        ctrl = ctrl._replace(params=params)
    return state._replace(opt_state=state.opt_state._replace(controller=ctrl))


def policy_groups(
    configs: Sequence[tuple[str, ml_collections.ConfigDict]],
    space: PlanSpace,
    network: PlanNetwork,
    params: Any,
) -> list[HostGroup]:
    """One host group per ``(name, config)`` (:func:`group_configs`), run by the Magistrate."""
    return [HostGroup(make_train(c, policy_controller(space, params, network)), write_params, name)
            for name, c in configs]  # fmt: skip
