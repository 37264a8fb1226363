"""Lysis while training: compact the model when units are lysed, re-jit, and go on.

The recipe for a training loop pruned by ``emrakul.wrap`` with group pruning
(:mod:`~emrakul.export.group_pruning`): every so often call :func:`lyse_training`; when its plan
is not empty, continue with its variables, optimizer state and apply function and rebuild (and
re-jit) the train step. Only units whose leader is entirely ``LYSED`` go (sedated units may wake),
``multiple_of`` rounds the surviving widths so a run recompiles a handful of times, and every
later surgery asks each compact layer for the original layer's number of pruned units (or
weights) less those removed (``Knobs.lysed``, ``Knobs.kept``). Training then goes on exactly as it
would have masked once the sparsity schedule is done; during it, a layer whose input units were
removed ranks its own units without those inputs' rows (which a masked run still counts), so
it may choose other units, but as many. Controllers that regrow lysed weights (RigL, SET) lose the
removed units for good.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.export.depgraph import Group, dependency_graph
from emrakul.export.group_pruning import GroupPruning, collection_prefix, group_pruning
from emrakul.export.lysis import Plan, cut, lyse
from emrakul.surgery import lifecycle
from emrakul.wrapper.state import EmrakulState, find_state


class TrainingLysis(NamedTuple):
    """The result of :func:`lyse_training` (unchanged inputs when ``plan`` is empty).

    Attributes:
      variables: the compact variables (dense values: sedated weights keep theirs).
      opt_state: the compact optimizer state (inner moments, lifecycle, vital signs cut; the
        lysis knobs updated).
      apply: the compact model's apply function.
      groups: the group pruning of the compact model (same leaders).
      plan: what was removed (leaf path -> ``(axis, positions)``); empty when nothing was.
      removed: group name -> units removed.
      intact: group name -> why its lysed units stayed (the compact model's outputs would
        differ: training goes on masked for that group).
    """

    variables: Any
    opt_state: Any
    apply: Callable
    groups: GroupPruning
    plan: Plan
    removed: dict[str, int]
    intact: dict[str, str]


def lysed_only(groups: GroupPruning, opt_state: Any, collection: str | None) -> Callable:
    """``keep`` for :func:`~emrakul.export.lyse`: a unit stays unless its leader slice is all
    ``LYSED`` (groups without a leader keep every unit)."""
    prefix = collection_prefix(collection)
    state = find_state(opt_state).life.state
    life = {
        jax.tree_util.keystr(p): np.asarray(s)
        for p, s in jax.tree_util.tree_flatten_with_path(state)[0]
    }

    def keep(group: Group) -> np.ndarray:
        for m in group.members:
            rel = m.path[len(prefix) :]
            if m.path.startswith(prefix) and groups.leaders.get(rel) == m.axis:
                s = np.moveaxis(life[rel], m.axis, 0)
                gone = (s.reshape(s.shape[0], -1) == lifecycle.LYSED).all(axis=1)
                return ~gone[m.positions[:, 0]]
        return np.ones(group.units, bool)

    return keep


def count_lysed(
    before: EmrakulState, after: EmrakulState, plan: Plan, units: dict[str, int]
) -> EmrakulState:
    """``after`` with each pruned layer's lysis knobs (``Knobs.lysed``, ``Knobs.kept``) updated.

    Of a layer pruned by units along ``units[path]``, ``c`` of its ``C`` units removed count as
    pruned and ``(C - c) / C`` of it is left (its input rows going changes no unit fraction); of
    any other layer, the removed non-alive weights count as pruned and ``n' / n`` is left. Both
    are kept relative to the original layer, so every later surgery asks the compact layer for
    the same number of pruned units (or weights) as the masked run's.
    """
    flat_old = jax.tree_util.tree_flatten_with_path(before.life.state)[0]
    flat_new = jax.tree_util.tree_leaves(after.life.state)
    pairs = [
        (jax.tree_util.keystr(p), s0, s1) for (p, s0), s1 in zip(flat_old, flat_new, strict=True)
    ]
    pairs = [(p, s0, s1) for p, s0, s1 in pairs if np.ndim(s0) > 0]
    lysed = np.asarray(before.knobs.lysed, np.float64).copy()
    kept = np.asarray(before.knobs.kept, np.float64).copy()
    for i, (path, s0, s1) in enumerate(pairs):
        if path in units:
            axis = units[path] % np.ndim(s0)
            total = np.shape(s0)[axis]
            gone = sum(len(pos) for a, pos in plan.get(path, ()) if a == axis)
            left = (total - gone) / total
        else:
            alive0 = np.asarray(s0) != lifecycle.ALIVE
            gone = int(alive0.sum()) - int(np.sum(np.asarray(s1) != lifecycle.ALIVE))
            total, left = np.size(s0), np.size(s1) / np.size(s0)
        lysed[i] += kept[i] * gone / total
        kept[i] *= left
    knobs = after.knobs._replace(
        lysed=jnp.asarray(lysed, after.knobs.lysed.dtype),
        kept=jnp.asarray(kept, after.knobs.kept.dtype),
    )
    return after._replace(knobs=knobs)


def _anything_to_remove(groups: GroupPruning, opt_state: Any, multiple_of: int) -> bool:
    """Whether some leader has enough wholly lysed units to shrink to a lower multiple (a cheap
    test on the lifecycle alone, so that calls with nothing to do cost nothing)."""
    life = find_state(opt_state).life.state
    for path, s in jax.tree_util.tree_flatten_with_path(life)[0]:
        axis = groups.leaders.get(jax.tree_util.keystr(path))
        if axis is None:
            continue
        s = np.moveaxis(np.asarray(s), axis, 0)
        units = s.shape[0]
        lysed = int((s.reshape(units, -1) == lifecycle.LYSED).all(axis=1).sum())
        if -(-(units - lysed) // multiple_of) * multiple_of < units:
            return True
    return False


def _replace_state(tree: Any, new: EmrakulState) -> Any:
    is_state = lambda x: isinstance(x, EmrakulState)
    return jax.tree.map(lambda x: new if is_state(x) else x, tree, is_leaf=is_state)


def lyse_training(
    apply_fn: Callable,
    variables: Any,
    opt_state: Any,
    groups: GroupPruning,
    *example_args: Any,
    multiple_of: int = 1,
    collection: str | None = "params",
) -> TrainingLysis:
    """Removes the lysed units of a model pruned by ``emrakul.wrap`` with group pruning.

    Args:
      apply_fn: ``apply(variables, *args)`` of the current model.
      variables: the current variables (dense: the wrapper's params in ``collection``).
      opt_state: the optimizer state holding the ``EmrakulState``.
      groups: the current :class:`~emrakul.export.group_pruning.GroupPruning`.
      *example_args: example inputs (the compact outputs are checked on them).
      multiple_of: surviving widths are multiples of this (few recompilations).
      collection: the collection the wrapper prunes (None: ``variables`` itself).

    Returns:
      The :class:`TrainingLysis`.

    Raises:
      ValueError: ``multiple_of`` is not a positive int, or ``opt_state`` holds no
        ``EmrakulState``.
    """
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive int, got {multiple_of!r}")
    if not _anything_to_remove(groups, opt_state, multiple_of):
        return TrainingLysis(variables, opt_state, apply_fn, groups, {}, {}, {})
    params = variables if collection is None else variables[collection]
    tied = jax.jit(groups.tied)(params, opt_state)
    eff = tied if collection is None else {**variables, collection: tied}
    keep = lysed_only(groups, opt_state, collection)
    out = lyse(
        apply_fn, eff, *example_args, opt_state=opt_state, keep=keep, multiple_of=multiple_of
    )
    if not out.plan:
        return TrainingLysis(variables, opt_state, apply_fn, groups, {}, {}, out.intact)
    new_vars = cut(variables, out.plan)
    prefix = collection_prefix(collection)
    rel_plan = {p[len(prefix) :]: cuts for p, cuts in out.plan.items() if p.startswith(prefix)}
    state = count_lysed(find_state(opt_state), find_state(out.opt_state), rel_plan, groups.leaders)
    new_state = _replace_state(out.opt_state, state)
    graph = dependency_graph(out.apply, new_vars, *example_args)
    new_groups = group_pruning(graph, new_vars, collection, prefer=groups.leaders)
    return TrainingLysis(
        new_vars, new_state, out.apply, new_groups, out.plan, out.removed, out.intact
    )
