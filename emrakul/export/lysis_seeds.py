"""Lysis of several runs trained as one program (seeds vmapped): units aligned to one width.

The lab trains every seed of a cell in one compiled program, so every seed's arrays must keep
the same shapes, but each seed lyses different units. :func:`lyse_seeds` removes, from every
group, as many units as every seed can spare (the smallest count, rounded by ``multiple_of``):
each seed's units are first *permuted* so that the ones it removes come last (a permutation of a
group's units, applied to every member slice, the optimizer state and Emrakul's state alike,
leaves the function and the training unchanged), then the same tail is cut from every seed, and
one compact program serves them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.export.depgraph import _assemble, dependency_graph, trace_model
from emrakul.export.group_pruning import GroupPruning, collection_prefix, group_pruning
from emrakul.export.lysis import (
    Plan,
    _descendant,
    _mismatch,
    _to_multiple,
    _verified,
    compact_apply,
    cut,
    cut_state,
    dead_units,
    make_plan,
    take_leaf,
)
from emrakul.export.lysis_training import TrainingLysis, _replace_state, count_lysed, lysed_only
from emrakul.wrapper.state import find_state


def _unstack(tree: Any, n: int) -> list:
    return [jax.tree.map(lambda x, s=s: np.asarray(x)[s], tree) for s in range(n)]


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def _permutation(cands: list, chosen: list) -> Plan:
    """Per leaf path, ``(axis, index)`` moving each group's chosen units to its tail."""
    ops: dict[str, list] = {}
    for (g, _), pick in zip(cands, chosen, strict=True):
        order = np.concatenate([np.setdiff1d(np.arange(g.units), pick), pick])
        for m in g.members:
            index = np.arange(int(m.positions.max()) + 1)
            index[m.positions.ravel()] = m.positions[order].ravel()
            ops.setdefault(m.path, []).append((m.axis, index))
    return {p: tuple(v) for p, v in ops.items()}


def _full(index: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([index, np.arange(len(index), size)])


def _permute(tree: Any, ops: Plan, like: Any = None) -> Any:
    """``tree`` reordered by ``ops`` (its own leaves, or every subtree shaped like ``like``)."""

    def take(x: Any, leaf_ops: tuple) -> Any:
        return take_leaf(x, tuple((a, _full(i, np.shape(x)[a])) for a, i in leaf_ops))

    return cut(tree, ops, leaf_fn=take) if like is None else cut_state(tree, like, ops, take)


def _check_seeds(apply_fn: Callable, effs: list, args: tuple, plan: Plan, tol: tuple):
    """Every seed's compact outputs against its masked ones (one vmapped program each)."""
    small = compact_apply(apply_fn, effs[0], plan)
    want = jax.jit(jax.vmap(lambda v: apply_fn(v, *args)))(_stack(effs))
    got = jax.jit(jax.vmap(lambda v: small(v, *args)))(_stack([cut(e, plan) for e in effs]))
    return _mismatch(want, got, *tol)


def lyse_seeds(
    apply_fn: Callable,
    variables: Any,
    opt_state: Any,
    groups: GroupPruning,
    *example_args: Any,
    multiple_of: int = 1,
    collection: str | None = "params",
    tol: tuple[float, float] = (1e-5, 1e-5),
) -> TrainingLysis:
    """Removes the units every seed has lysed, after aligning them (module docstring).

    Args:
      apply_fn: ``apply(variables, *args)`` of one seed's model.
      variables: every seed's variables (leading seeds axis on every leaf).
      opt_state: every seed's optimizer state (leading seeds axis), holding the EmrakulState.
      groups: the current :class:`~emrakul.export.group_pruning.GroupPruning`.
      *example_args: one seed's example inputs (the compact outputs are checked on them).
      multiple_of: surviving widths are multiples of this.
      collection: the collection the wrapper prunes (None: the variables themselves).
      tol: ``(rtol, atol)`` of the output check.

    Returns:
      A :class:`~emrakul.export.lysis_training.TrainingLysis` whose variables and optimizer
      state carry the leading seeds axis (the plan: the tail cut after each seed's permutation).
    """
    n = len(jax.tree.leaves(variables)[0])
    vs, states = _unstack(variables, n), _unstack(opt_state, n)
    tied = jax.jit(groups.tied)
    effs = []
    for v, st in zip(vs, states, strict=True):
        params = v if collection is None else v[collection]
        effs.append(tied(params, st) if collection is None else {**v, collection: tied(params, st)})
    traced = trace_model(apply_fn, effs[0], *example_args)
    graph = _assemble(traced.labels, traced.ids, traced.paths, traced.walk)
    prefix = collection_prefix(collection)
    checked = lambda p: p.startswith(prefix)
    removable = []
    for eff, st in zip(effs, states, strict=True):
        leaves = dict(zip(traced.paths, jax.tree.leaves(eff), strict=True))
        keep = lysed_only(groups, st, collection)
        removable.append([dead_units(g, leaves, checked) & ~keep(g) for g in graph.groups])
    cands = []
    for k, g in enumerate(graph.groups):
        count = min(int(_to_multiple(r[k], multiple_of).sum()) for r in removable)
        if count:
            cands.append((g, np.arange(g.units) >= g.units - count))
    return _finish(
        apply_fn, vs, states, effs, groups, example_args, cands, removable, graph, collection, tol
    )


def _finish(apply_fn, vs, states, effs, groups, args, cands, removable, graph, collection, tol):
    """Permutes every seed, checks, cuts the common tail and counts what went in the lysis knobs."""
    index = {id(g): k for k, g in enumerate(graph.groups)}
    perms = []
    for r in removable:
        chosen = [np.flatnonzero(r[index[id(g)]])[: int(d.sum())] for g, d in cands]
        perms.append(_permutation(cands, chosen))
    effs = [_permute(e, p) for e, p in zip(effs, perms, strict=True)]
    cands, intact = _verified(apply_fn, effs, args, cands, tol, _check_seeds)
    if not cands:
        return TrainingLysis(_stack(vs), _stack(states), apply_fn, groups, {}, {}, intact)
    plan = make_plan(cands)
    new_vs, new_states = [], []
    prefix = collection_prefix(collection)
    rel = {p[len(prefix) :]: c for p, c in plan.items() if p.startswith(prefix)}
    for v, st, e, perm in zip(vs, states, effs, perms, strict=True):
        v = _permute(v, perm)
        small = cut_state(_permute(st, perm, e), e, plan)
        new_vs.append(cut(v, plan))
        after = count_lysed(find_state(st), find_state(small), rel, groups.leaders)
        new_states.append(_replace_state(small, after))
    apply = _descendant(apply_fn, effs[0], plan)
    first = new_vs[0]
    new_groups = group_pruning(
        dependency_graph(apply, first, *args), first, collection, prefer=groups.leaders
    )
    removed = {g.name: int(d.sum()) for g, d in cands}
    return TrainingLysis(
        _stack(new_vs), _stack(new_states), apply, new_groups, plan, removed, intact
    )
