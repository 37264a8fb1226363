"""Lysis: removing dead units for good from params, optimizer state and Emrakul state together.

A unit of a :class:`~emrakul.export.depgraph.Group` is dead when every slice that produces its
value (kernel columns, biases, normalisation scales and shifts, embedding columns) is zero in the
masked parameters; its consumers' input rows may hold anything. :func:`lyse` removes the dead
units of every group: it slices the variables, every parameter-shaped subtree of an optimizer
state (Adam's moments, the lifecycle, the vital signs) and the masks the same way, and returns
the compact model's apply function, a replay of the traced program on the smaller arrays
(:mod:`~emrakul.export.graph_replay`). The compact outputs are checked against the masked model
on the example input; a group whose removal changes them (e.g. a variance computed around the
mean, so a removed zero still counted) keeps its units and is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.export.depgraph import Group, _assemble, leaf_paths, trace_model
from emrakul.export.graph_replay import replay
from emrakul.export.resolve import resolve_masks

Plan = dict[str, tuple[tuple[int, np.ndarray], ...]]


class Lysis(NamedTuple):
    """The result of :func:`lyse`.

    Attributes:
      variables: the compact variables (masked entries zero).
      opt_state: the compact optimizer state (None if none was given).
      masks: the compact masks (None if none were given as a tree).
      plan: leaf path -> ``(axis, removed positions)`` per cut axis (what :func:`cut` applies).
      removed: group name -> number of units removed.
      intact: group name -> why its dead units were kept.
      apply: the compact model, ``apply(variables, *args)`` like the original (jit it); its
        ``lineage`` attribute (:class:`Lineage`) says what it was cut from (for export).
    """

    variables: Any
    opt_state: Any
    masks: Any
    plan: Plan
    removed: dict[str, int]
    intact: dict[str, str]
    apply: Callable


def dead_units(
    group: Group, leaves: Mapping[str, Any], checked: Callable[[str], bool]
) -> np.ndarray:
    """Bool per unit: every checked producing slice of the unit is zero (no checked -> none)."""
    dead = np.ones(group.units, bool)
    seen = False
    for m in group.members:
        if m.consumer or not checked(m.path):
            continue
        x = np.moveaxis(np.asarray(leaves[m.path]), m.axis, 0)
        nonzero = (x.reshape(x.shape[0], -1) != 0).any(axis=1)
        dead &= ~nonzero[m.positions].any(axis=1)
        seen = True
    return dead if seen else np.zeros(group.units, bool)


def make_plan(cands: list[tuple[Group, np.ndarray]]) -> Plan:
    """Leaf path -> (axis, sorted positions to remove) for ``(group, dead units)`` pairs."""
    cuts: dict[str, dict[int, list]] = {}
    for g, d in cands:
        for m in g.members:
            cuts.setdefault(m.path, {}).setdefault(m.axis, []).extend(m.positions[d].ravel())
    return {
        p: tuple((a, np.unique(np.asarray(pos, np.int64))) for a, pos in sorted(ax.items()) if pos)
        for p, ax in cuts.items()
    }


def _cut_leaf(x: Any, cuts: tuple) -> Any:
    out = np.asarray(x)
    for axis, pos in cuts:
        out = np.delete(out, pos, axis=axis)
    return jnp.asarray(out) if isinstance(x, jax.Array) else out


def take_leaf(x: Any, ops: tuple) -> Any:
    """``x`` with ``np.take(x, index, axis)`` applied for every ``(axis, index)`` (a permutation
    of units: the leaf operation of :func:`cut` / :func:`cut_state` that reorders)."""
    out = np.asarray(x)
    for axis, index in ops:
        out = np.take(out, index, axis=axis)
    return jnp.asarray(out) if isinstance(x, jax.Array) else out


def cut(tree: Any, plan: Plan, prefix: str = "", leaf_fn: Callable = _cut_leaf) -> Any:
    """Applies ``plan`` to the leaves of ``tree`` it names (paths under ``prefix``).

    ``leaf_fn(leaf, plan[path])`` does the work: removing positions by default, or
    :func:`take_leaf` for a plan of ``(axis, index)`` reorderings.
    """
    return _cut_matching(tree, plan, prefix, None, leaf_fn)


def _cut_matching(
    tree: Any, plan: Plan, prefix: str, like: Any, leaf_fn: Callable = _cut_leaf
) -> Any:
    """Applies ``plan`` to ``tree`` (``like=None``) or to every subtree of it shaped like
    ``like``: its structure, leaves of the parameters' shapes or scalars (mask markers); only
    leaves of the parameter's own shape change."""
    if like is None:
        return jax.tree_util.tree_map_with_path(
            lambda p, x: (
                leaf_fn(x, plan[prefix + jax.tree_util.keystr(p)])
                if prefix + jax.tree_util.keystr(p) in plan
                else x
            ),
            tree,
        )
    treedef = jax.tree_util.tree_structure(like)
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(like)]
    paths = [prefix + p for p in leaf_paths(like)]

    def matches(node: Any) -> bool:
        if jax.tree_util.tree_structure(node) != treedef:
            return False
        leaves = jax.tree_util.tree_leaves(node)
        return all(np.shape(x) in (s, ()) for x, s in zip(leaves, shapes, strict=True))

    def cut_node(node: Any) -> Any:
        if not matches(node):
            return node
        leaves = jax.tree_util.tree_leaves(node)
        new = [
            leaf_fn(x, plan[p]) if p in plan and np.shape(x) == s else x
            for x, s, p in zip(leaves, shapes, paths, strict=True)
        ]
        return treedef.unflatten(new)

    return jax.tree_util.tree_map(cut_node, tree, is_leaf=matches)


def cut_state(state: Any, variables: Any, plan: Plan, leaf_fn: Callable = _cut_leaf) -> Any:
    """Cuts (or, with ``leaf_fn``, reorders) every subtree of ``state`` shaped like
    ``variables`` or like its ``params``."""
    state = _cut_matching(state, plan, "", variables, leaf_fn)
    if isinstance(variables, Mapping) and "params" in variables:
        state = _cut_matching(state, plan, "['params']", variables["params"], leaf_fn)
    return state


class Lineage(NamedTuple):
    """Where a compact model comes from: the original apply function, the original variables'
    shapes (``jax.ShapeDtypeStruct`` leaves) and everything removed from them so far."""

    apply_fn: Callable
    template: Any
    plan: Plan


def compose(first: Plan, second: Plan, template: Any) -> Plan:
    """One plan relative to ``template`` doing ``first`` and then ``second`` (whose positions
    index the arrays ``first`` left)."""
    shapes = dict(
        zip(
            leaf_paths(template),
            (x.shape for x in jax.tree_util.tree_leaves(template)),
            strict=True,
        )
    )
    out: Plan = {}
    for path in sorted(set(first) | set(second)):
        axes = {a: pos for a, pos in first.get(path, ())}
        for a, pos in second.get(path, ()):
            kept = np.delete(np.arange(shapes[path][a]), axes.get(a, np.zeros(0, np.int64)))
            axes[a] = np.union1d(axes.get(a, np.zeros(0, np.int64)), kept[pos])
        out[path] = tuple(sorted(axes.items()))
    return out


def compact_apply(apply_fn: Callable, template: Any, plan: Plan) -> Callable:
    """The compact model: ``apply_fn``'s traced program replayed without the planned units.

    Args:
      apply_fn: the original ``apply(variables, *args)``.
      template: the original variables (arrays or ``jax.ShapeDtypeStruct``).
      plan: what was removed (:func:`make_plan`).

    Returns:
      ``apply(compact_variables, *args)``; traced once per input shape (cached), jit-able.
    """
    template = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    cache: dict[Any, tuple] = {}

    def program(args: tuple) -> tuple:
        key = tuple(
            (tuple(np.shape(x)), str(jnp.result_type(x))) for x in jax.tree_util.tree_leaves(args)
        )
        key = (jax.tree_util.tree_structure(args), key)
        if key not in cache:
            spec = jax.tree_util.tree_map(
                lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), args
            )
            traced = trace_model(apply_fn, template, *spec)
            index = {p: i for i, p in enumerate(traced.paths)}
            removed = set()
            for path, cuts in plan.items():
                for axis, pos in cuts:
                    removed.update(traced.labels.roots(traced.ids[index[path]][axis][pos]).tolist())
            roots = traced.labels.roots(np.arange(len(traced.labels.parent)))
            cache[key] = (traced, np.isin(roots, list(removed)))
        return cache[key]

    def apply(variables: Any, *args: Any) -> Any:
        traced, dead = program(args)
        flat = jax.tree_util.tree_leaves(variables) + jax.tree_util.tree_leaves(args)
        return jax.tree_util.tree_unflatten(traced.out_tree, replay(traced.trace, dead, flat))

    apply.lineage = Lineage(apply_fn, template, plan)  # type: ignore[attr-defined]
    return apply


def _descendant(apply_fn: Callable, variables: Any, plan: Plan) -> Callable:
    """The compact apply after ``plan``; a compact model's lineage is extended, not nested, so
    every compact model replays the original program once."""
    root = getattr(apply_fn, "lineage", None)
    if root is None:
        return compact_apply(apply_fn, variables, plan)
    return compact_apply(root.apply_fn, root.template, compose(root.plan, plan, root.template))


def _effective(variables: Any, masks: Any) -> Any:
    """The variables with masked entries zero (masks over the variables or their ``params``)."""
    if masks is None:
        return variables
    if isinstance(variables, Mapping) and "params" in variables:
        try:
            params, _ = resolve_masks(variables["params"], masks)
        except ValueError:
            return resolve_masks(variables, masks)[0]
        return {**variables, "params": params}
    return resolve_masks(variables, masks)[0]


def _mismatch(want: Any, got: Any, rtol: float, atol: float) -> str | None:
    """None when the outputs agree, else what differs."""
    a, b = jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)
    for x, y in zip(a, b, strict=True):
        if np.shape(x) != np.shape(y):
            return f"an output's shape changed {np.shape(x)} -> {np.shape(y)}"
        if not np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol):
            gap = float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            return f"outputs change by up to {gap:.3g}"
    return None


def _check(apply_fn: Callable, eff: Any, args: tuple, plan: Plan, tol: tuple) -> str | None:
    """Runs the compact model on ``args`` against the masked one."""
    try:
        got = jax.jit(compact_apply(apply_fn, eff, plan))(cut(eff, plan), *args)
    except Exception as err:
        return f"the compact program fails: {type(err).__name__}: {str(err)[:160]}"
    return _mismatch(jax.jit(apply_fn)(eff, *args), got, *tol)


def _to_multiple(dead: np.ndarray, multiple_of: int) -> np.ndarray:
    """The first dead units, as many as leave a multiple of ``multiple_of`` units (or none)."""
    units = len(dead)
    width = -(-(units - int(dead.sum())) // multiple_of) * multiple_of
    n_remove = max(units - width, 0)
    out = np.zeros_like(dead)
    out[np.flatnonzero(dead)[:n_remove]] = True
    return out


def _verified(
    apply_fn: Callable,
    eff: Any,
    args: tuple,
    cands: list,
    tol: tuple,
    check: Callable | None = None,
) -> tuple:
    """Drops the groups whose removal changes the outputs; returns ``(kept, intact reasons)``."""
    check = check or _check
    intact: dict[str, str] = {}
    if not cands or not check(apply_fn, eff, args, make_plan(cands), tol):
        return cands, intact
    for g, d in cands:
        if why := check(apply_fn, eff, args, make_plan([(g, d)]), tol):
            red = f" (reduced over by {', '.join(g.reduced)})" if g.reduced else ""
            intact[g.name] = why + red
    cands = [(g, d) for g, d in cands if g.name not in intact]
    if cands and (why := check(apply_fn, eff, args, make_plan(cands), tol)):
        intact.update({g.name: f"together: {why}" for g, _ in cands})
        cands = []
    return cands, intact


def lyse(
    apply_fn: Callable,
    variables: Any,
    *example_args: Any,
    masks: Any = None,
    opt_state: Any = None,
    checked: Callable[[str], bool] | None = None,
    keep: Callable[[Group], np.ndarray] | None = None,
    multiple_of: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Lysis:
    """Removes every dead unit of every dependency group, checked against the masked model.

    Args:
      apply_fn: ``apply(variables, *args)`` (inference form; see :func:`dependency_graph`).
      variables: the model's variables (masked entries zero, or give ``masks``).
      *example_args: example inputs; the compact outputs must match the masked ones on them.
      masks: optional masks in any form :func:`~emrakul.export.resolve_masks` accepts, over the
        variables or over their ``params`` collection (e.g. the wrapper's optimizer state).
      opt_state: optional optimizer state; every parameter-shaped subtree is cut the same way.
      checked: which leaf paths must be zero for a unit to be dead (default: the ``params``
        collection if there is one, else every leaf; running statistics need not be zero).
      keep: optional ``group -> bool per unit``: units that must stay even if dead (e.g. only
        sedated, which may wake).
      multiple_of: every group keeps a multiple of this many units (or all of them), so that a
        run lysing as it trains sees few distinct shapes and recompiles few times; dead units
        beyond the multiple stay (masked).
      rtol, atol: the tolerance of the output check.

    Returns:
      The :class:`Lysis`.

    Raises:
      ValueError: ``multiple_of`` is not a positive int.
    """
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive int, got {multiple_of!r}")
    eff = _effective(variables, masks)
    if checked is None:
        has_params = isinstance(eff, Mapping) and "params" in eff
        checked = (lambda p: p.startswith("['params']")) if has_params else (lambda p: True)
    traced = trace_model(apply_fn, eff, *example_args)
    graph = _assemble(traced.labels, traced.ids, traced.paths, traced.walk)
    leaves = dict(zip(traced.paths, jax.tree_util.tree_leaves(eff), strict=True))
    cands = []
    for g in graph.groups:
        d = dead_units(g, leaves, checked) & (True if keep is None else ~keep(g))
        d = _to_multiple(d, multiple_of)
        if d.any():
            cands.append((g, d))
    cands, intact = _verified(apply_fn, eff, example_args, cands, (rtol, atol))
    plan = make_plan(cands)
    return Lysis(
        variables=cut(eff, plan),
        opt_state=None if opt_state is None else cut_state(opt_state, eff, plan),
        masks=None if masks is None else cut_state(masks, eff, plan),
        plan=plan,
        removed={g.name: int(d.sum()) for g, d in cands},
        intact=intact,
        apply=_descendant(apply_fn, eff, plan),
    )
