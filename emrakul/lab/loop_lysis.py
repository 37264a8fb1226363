"""Group pruning and lysis between chunks for the classifier loop (issue 19).

With ``prune.structure='groups'`` the host's dependency groups (:mod:`emrakul.export.depgraph`)
are pruned as units: each group's leader kernel with ``Units(axis)``, its followers tied to it
(:class:`~emrakul.export.GroupPruning`). With ``lysis.every > 0`` the program also removes the
units every seed has lysed, every ``lysis.every`` chunks (:func:`~emrakul.export.lyse_seeds`:
each seed's lysed units are permuted to the tail, and the common tail is cut from the params,
Adam's moments and Emrakul's lifecycle, vital signs and layer targets alike), and the driver goes
on with the smaller program (:mod:`emrakul.lab.driver`). A compact program is rebuilt from a
record of what was removed (the plan relative to the original host, and the group leaders), so
a resumed run restores its checkpoints into the same program.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from emrakul import controllers as ctl
from emrakul.export.depgraph import dependency_graph
from emrakul.export.group_pruning import GroupPruning, group_pruning
from emrakul.export.lysis import compact_apply, cut, cut_state
from emrakul.export.lysis_checkpoint import plan_from_json, plan_to_json
from emrakul.export.lysis_seeds import lyse_seeds
from emrakul.lab import loop
from emrakul.lab.build import config_adam
from emrakul.lab.program import Lysis, Program


def host_groups(module: Any, x: jax.Array, variables: Any = None, apply=None, prefer=None):
    """The :class:`~emrakul.export.GroupPruning` of a host (``variables``: its concrete
    variables, initialised when ``None``; ``apply``: a compact host's apply)."""
    if variables is None:
        variables = module.init(jax.random.PRNGKey(0), x)
    graph = dependency_graph(apply or module.apply, variables, x)
    return group_pruning(graph, variables, "params", prefer=prefer)


class _Context(NamedTuple):
    """What every program of one lysed run shares (the base program's parts)."""

    config: ml_collections.ConfigDict
    controller: ctl.Controller
    base: loop.Setup
    num_intervals: int
    every: int
    multiple_of: int
    template: Any  # the original host's variables as jax.ShapeDtypeStruct
    full_sizes: tuple[int, ...]


def make_lysis(
    config: ml_collections.ConfigDict,
    controller: ctl.Controller,
    setup: loop.Setup,
    num_intervals: int,
) -> Lysis | None:
    """The base program's :class:`~emrakul.lab.program.Lysis` (``None`` when
    ``lysis.every`` is 0).

    Raises:
      ValueError: the controller observes activation statistics, which are measured by the
        host's module (the compact host is a replayed program without one).
    """
    every = int(config.get("lysis", {}).get("every", 0))
    if every == 0:
        return None
    if controller.needs_activations:
        raise ValueError(
            f"config.lysis.every: controller '{controller.name}' observes activation "
            "statistics, which a lysed host cannot give yet; use lysis.every=0"
        )
    x = setup.data.train.x[:1]
    template = jax.eval_shape(lambda k: setup.module.init(k, x), jax.random.PRNGKey(0))
    life = jax.eval_shape(functools.partial(loop.init, setup), jax.random.PRNGKey(0))
    sizes = tuple(int(s.size) for s in jax.tree.leaves(life.opt_state.life.state) if s.ndim > 0)
    multiple_of = int(config.lysis.get("multiple_of", 8))
    ctx = _Context(config, controller, setup, num_intervals, every, multiple_of, template, sizes)
    return _lysis(ctx, setup)


def _lysis(ctx: _Context, setup: loop.Setup) -> Lysis:
    return Lysis(
        every=ctx.every,
        lyse=functools.partial(_lyse, ctx, setup),
        rebuild=functools.partial(rebuild, ctx),
    )


def rebuild(ctx: _Context, record: dict) -> Program:
    """The compact program of ``record`` (``plan``: what was removed from the original host,
    as :func:`~emrakul.export.lysis_checkpoint.plan_to_json`; ``leaders``: the group leaders).

    Its ``init`` gives zeros of the compact state's shapes: a compact program only continues
    from a lysed or restored state, and the driver needs the shapes to restore into.
    """
    base = ctx.base
    plan = plan_from_json(record["plan"])
    apply = compact_apply(base.module.apply, ctx.template, plan)
    state = jax.jit(functools.partial(loop.init, base))(jax.random.PRNGKey(0))
    variables = {"params": state.params}
    small = cut(variables, plan)
    opt_state = cut_state(state.opt_state, variables, plan)
    shapes = jax.eval_shape(lambda: state._replace(params=small["params"], opt_state=opt_state))
    leaders = {p: int(a) for p, a in record["leaders"].items()}
    x = base.data.train.x[:1]
    groups = host_groups(base.module, x, small, apply, prefer=leaders)
    total = ctx.num_intervals * base.every
    tx = config_adam(ctx.config, ctx.controller, total, groups.structure, groups.filter)
    setup = base._replace(tx=tx, groups=groups, apply=apply, full_sizes=ctx.full_sizes)

    def init_fn(key: jax.Array) -> loop.RunState:
        del key
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    return loop.program(setup, ctx.num_intervals, init_fn, _lysis(ctx, setup))


def _lyse(ctx: _Context, setup: loop.Setup, state: loop.RunState):
    """Removes what every seed has lysed (``state``: every seed's, on the host)."""
    apply = setup.apply or setup.module.apply
    groups: GroupPruning = setup.groups
    out = lyse_seeds(
        apply,
        {"params": state.params},
        state.opt_state,
        groups,
        loop.monitor_data(setup).x,
        multiple_of=ctx.multiple_of,
    )
    if not out.plan:
        return None
    record = {"plan": plan_to_json(out.apply.lineage.plan), "leaders": dict(out.groups.leaders)}
    program = rebuild(ctx, record)
    new = loop.RunState(
        out.variables["params"], out.opt_state, jnp.asarray(state.key), jnp.asarray(state.interval)
    )
    return program, new, record
