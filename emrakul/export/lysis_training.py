"""Lysis while training: compact the model when units are lysed, re-jit, and go on.

The recipe for a training loop pruned by ``emrakul.wrap`` with group pruning
(:mod:`~emrakul.export.group_pruning`): every so often call :func:`lyse_training`; when its plan
is not empty, continue with its variables, optimizer state and apply function and rebuild (and
re-jit) the train step. Only units whose leader is entirely ``LYSED`` go (sedated units may wake),
``multiple_of`` rounds the surviving widths so a run recompiles a handful of times, and each
pruned layer's target is rescaled so that the final number of non-alive weights of the original
layer is kept. Controllers that regrow lysed weights (RigL, SET) lose the removed units for good.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.export.depgraph import Group, dependency_graph
from emrakul.export.group_pruning import GroupPruning, group_pruning
from emrakul.export.lysis import Plan, cut, lyse
from emrakul.surgery import lifecycle
from emrakul.wrapper.state import EmrakulState, find_state


class TrainingLysis(NamedTuple):
    """The result of :func:`lyse_training` (unchanged inputs when ``plan`` is empty).

    Attributes:
      variables: the compact variables (dense values: sedated weights keep theirs).
      opt_state: the compact optimizer state (inner moments, lifecycle, vital signs cut; layer
        targets rescaled).
      apply: the compact model's apply function.
      groups: the group pruning of the compact model (same leaders).
      plan: what was removed (leaf path -> ``(axis, positions)``); empty when nothing was.
      removed: group name -> units removed.
    """

    variables: Any
    opt_state: Any
    apply: Callable
    groups: GroupPruning
    plan: Plan
    removed: dict[str, int]


def _prefix(collection: str | None) -> str:
    return "" if collection is None else jax.tree_util.keystr((jax.tree_util.DictKey(collection),))


def lysed_only(groups: GroupPruning, opt_state: Any, collection: str | None) -> Callable:
    """``keep`` for :func:`~emrakul.export.lyse`: a unit stays unless its leader slice is all
    ``LYSED`` (groups without a leader keep every unit)."""
    prefix = _prefix(collection)
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


def retarget(before: EmrakulState, after: EmrakulState) -> EmrakulState:
    """``after`` with each pruned layer's target rescaled to the weights it has left:
    ``t' = (t * n - removed non-alive) / n'`` (the original layer's final count is kept)."""
    old = [s for s in jax.tree.leaves(before.life.state) if np.ndim(s) > 0]
    new = [s for s in jax.tree.leaves(after.life.state) if np.ndim(s) > 0]
    target = np.asarray(before.knobs.target, np.float64).copy()
    for i, (s0, s1) in enumerate(zip(old, new, strict=True)):
        gone = int(np.sum(np.asarray(s0) != lifecycle.ALIVE)) - int(
            np.sum(np.asarray(s1) != lifecycle.ALIVE)
        )
        target[i] = np.clip((target[i] * np.size(s0) - gone) / max(np.size(s1), 1), 0.0, 1.0)
    knobs = after.knobs._replace(target=jnp.asarray(target, after.knobs.target.dtype))
    return after._replace(knobs=knobs)


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
    """
    params = variables if collection is None else variables[collection]
    tied = groups.tied(params, opt_state)
    eff = tied if collection is None else {**variables, collection: tied}
    keep = lysed_only(groups, opt_state, collection)
    out = lyse(
        apply_fn, eff, *example_args, opt_state=opt_state, keep=keep, multiple_of=multiple_of
    )
    if not out.plan:
        return TrainingLysis(variables, opt_state, apply_fn, groups, {}, {})
    new_vars = cut(variables, out.plan)
    new_state = _replace_state(
        out.opt_state, retarget(find_state(opt_state), find_state(out.opt_state))
    )
    graph = dependency_graph(out.apply, new_vars, *example_args)
    new_groups = group_pruning(graph, new_vars, collection, prefer=groups.leaders)
    return TrainingLysis(new_vars, new_state, out.apply, new_groups, out.plan, out.removed)
