"""The dependency graph of any JAX model: which parameter slices must be removed together.

Removing unit *i* of one tensor (a Dense output, a conv channel, an attention head) requires
removing the matching slices of every tensor coupled to it: its bias, the normalisation scale
and shift of that channel, the consumer's input rows, every tensor added into the same residual
stream, the rows of a flattened conv map that came from that channel. :func:`dependency_graph`
reads these couplings from the jaxpr of the user's apply function on an example input (Linen
``model.apply``, an NNX module through ``nnx.split``/``nnx.merge``, an Equinox model through
``eqx.partition``/``eqx.combine``: any function ``apply(variables, *args)``), so it needs no
knowledge of the module library (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning",
does this for PyTorch graphs). Parameter axes coupled to the model's inputs or outputs, to a
constant of fixed size or to an operation the graph cannot see through stay intact and are
reported with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from emrakul.export.graph_labels import Labels, fixed_axis
from emrakul.export.graph_rules import Trace, Walk, walk

_OUTPUT = "a model output"
_INPUT = "coupled to a model input, a spatial axis or a constant of fixed size"


class Member(NamedTuple):
    """One parameter axis of a group.

    Attributes:
      path: the leaf's path in the variables (``jax.tree_util.keystr``).
      axis: the axis the group's units index.
      consumer: True when the axis is contracted (a consumer's input rows): a removed unit no
        longer feeds it, so its values need not be zero for the unit to be dead.
      positions: int [units, k]: the positions along ``axis`` that belong to each unit (k > 1
        where a unit spans several positions, e.g. a channel of a flattened conv map).
    """

    path: str
    axis: int
    consumer: bool
    positions: np.ndarray


class Group(NamedTuple):
    """Parameter axes whose units are removed together (one region for structured pruning).

    Attributes:
      members: the coupled parameter axes.
      reduced: primitives that reduce over these units (``reduce_sum`` of a mean: LayerNorm,
        softmax, ...): removing a unit then changes the others' values, which ``lyse`` checks.
    """

    members: tuple[Member, ...]
    reduced: tuple[str, ...]

    @property
    def units(self) -> int:
        """The number of units in the group."""
        return len(self.members[0].positions)

    @property
    def name(self) -> str:
        """The first producing member, ``path:axis`` (the group's name in reports)."""
        ranked = sorted(self.members, key=lambda m: (m.consumer, -m.path.count("kernel")))
        m = ranked[0]
        return f"{m.path}:{m.axis}"


class Intact(NamedTuple):
    """Parameter axes that cannot lose units, and why."""

    members: tuple[tuple[str, int], ...]
    reasons: tuple[str, ...]


class DependencyGraph(NamedTuple):
    """The groups of a model (see :func:`dependency_graph`).

    Attributes:
      groups: the prunable groups.
      intact: the parameter axes fixed in place, with reasons.
      opaque: the primitives the graph could not see through (each fixed what it touched).
    """

    groups: tuple[Group, ...]
    intact: tuple[Intact, ...]
    opaque: tuple[str, ...]

    def report(self) -> str:
        """A readable summary: every group with its members, every intact axis with its reason."""
        lines = [f"{len(self.groups)} prunable groups"]
        for g in self.groups:
            red = f" (reduced over by {', '.join(g.reduced)})" if g.reduced else ""
            lines.append(f"  {g.name}: {g.units} units{red}")
            for m in g.members:
                role = "consumer" if m.consumer else "producer"
                lines.append(
                    f"    {m.path} axis {m.axis} ({role}, {m.positions.shape[1]} per unit)"
                )
        lines.append(f"{len(self.intact)} intact")
        for it in self.intact:
            names = ", ".join(f"{p}:{a}" for p, a in it.members)
            lines.append(f"  {names}: {'; '.join(it.reasons)}")
        if self.opaque:
            lines.append("not seen through: " + ", ".join(sorted(set(self.opaque))))
        return "\n".join(lines)


def leaf_paths(tree: Any) -> list[str]:
    """``jax.tree_util.keystr`` of every leaf, in flattening order."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def dependency_graph(apply_fn: Callable, variables: Any, *example_args: Any) -> DependencyGraph:
    """Traces ``apply_fn(variables, *example_args)`` and groups the coupled parameter axes.

    Args:
      apply_fn: a function of the variables (any pytree of arrays) and the example inputs. Trace
        the inference form (e.g. BatchNorm with running averages): every output is the model's.
      variables: the parameters (and other collections, e.g. ``batch_stats``).
      *example_args: inputs of the shapes the model will see (the batch size does not matter).

    Returns:
      The :class:`DependencyGraph`.

    Raises:
      ValueError: a leaf of ``variables`` is not an array.
    """
    traced = trace_model(apply_fn, variables, *example_args)
    return _assemble(traced.labels, traced.ids, traced.paths, traced.walk)


class Traced(NamedTuple):
    """A labelled trace of a model (see :func:`trace_model`)."""

    labels: Labels
    ids: list
    paths: list[str]
    walk: Walk
    trace: Trace
    out_tree: Any


def trace_model(apply_fn: Callable, variables: Any, *example_args: Any) -> Traced:
    """Walks the jaxpr of ``apply_fn(variables, *example_args)``; ``variables`` may be abstract.

    Returns:
      The labels, each leaf's per-axis element ids, the leaf paths, the walk's record and the
      trace (for replaying the program with units removed).

    Raises:
      ValueError: a leaf of ``variables`` is not an array.
    """
    flat = jax.tree_util.tree_leaves(variables)
    paths = leaf_paths(variables)
    for path, leaf in zip(paths, flat, strict=True):
        if not hasattr(leaf, "shape"):
            raise ValueError(f"variables{path} is {type(leaf).__name__}, not an array")
    closed, out_shape = jax.make_jaxpr(lambda v, *a: apply_fn(v, *a), return_shape=True)(
        variables, *example_args
    )
    labels = Labels()
    ids = [[labels.new(n) for n in x.shape] for x in flat]
    args = jax.tree_util.tree_leaves(example_args)
    in_axes = [[(a,) for a in leaf] for leaf in ids]
    in_axes += [[fixed_axis(n) for n in np.shape(x)] for x in args]
    in_prov = [tuple(frozenset({(i, d)}) for d in range(len(x.shape))) for i, x in enumerate(flat)]
    in_prov += [(frozenset(),) * np.ndim(x) for x in args]
    rec = Walk(set(), [])
    out_axes, _, trace = walk(labels, closed, in_axes, in_prov, rec)
    for axes in out_axes:
        for axis in axes:
            labels.fix(axis, _OUTPUT)
    return Traced(labels, ids, paths, rec, trace, jax.tree_util.tree_structure(out_shape))


def _assemble(labels: Labels, ids: list, paths: list[str], rec: Walk) -> DependencyGraph:
    """Sorts every parameter position by its unit's root into groups and intact axes."""
    fixed = labels.fixed_roots()
    reduced: dict[int, set[str]] = {}
    for comp, prim in labels.reduced:
        for r in set(labels.roots(comp).tolist()):
            reduced.setdefault(r, set()).add(prim)
    members: dict[int, dict[tuple[int, int], list[int]]] = {}
    for i, leaf in enumerate(ids):
        for d, arr in enumerate(leaf):
            if len(arr) < 2:
                continue
            for pos, r in enumerate(labels.roots(arr).tolist()):
                members.setdefault(r, {}).setdefault((i, d), []).append(pos)
    by_sig: dict[tuple, list[int]] = {}
    for r, mem in members.items():
        sig = tuple(sorted((key, len(pos)) for key, pos in mem.items()))
        by_sig.setdefault(sig, []).append(r)
    groups, intact = [], []
    for sig, roots in by_sig.items():
        stuck = [r for r in roots if r == 0 or r in fixed]
        if stuck:
            why = set().union(*(fixed.get(r, {_INPUT}) for r in stuck))
            intact.append(Intact(tuple((paths[i], d) for (i, d), _ in sig), tuple(sorted(why))))
        free = sorted(
            (r for r in roots if r != 0 and r not in fixed), key=lambda r: members[r][sig[0][0]][0]
        )
        if free:
            groups.append(_group(sig, free, members, paths, reduced, rec.consumed))
    return DependencyGraph(tuple(groups), tuple(intact), tuple(rec.opaque))


def _group(
    sig: tuple, roots: list, members: dict, paths: list, reduced: dict, consumed: set
) -> Group:
    """One group: per member, the positions of each unit (units in order of first position)."""
    mems = tuple(
        Member(paths[i], d, (i, d) in consumed, np.array([members[r][(i, d)] for r in roots]))
        for (i, d), _ in sig
    )
    red = sorted(set().union(*(reduced.get(r, set()) for r in roots)))
    return Group(mems, tuple(red))
