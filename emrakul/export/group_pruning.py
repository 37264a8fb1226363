"""Group-aware structured pruning through ``emrakul.wrap``: a dependency group is one region.

Pruning a Dense kernel's output columns with ``Units`` leaves the unit alive (its bias, its
normalisation shift, the other kernels adding into the same residual stream still produce a
value), so nothing can be removed for good. :func:`group_pruning` picks one *leader* per
dependency group (a producing kernel whose units are single slices), which ``emrakul.wrap``
prunes with ``Units(axis)`` (``filter`` and ``structure`` below; every controller works as
usual, the learned one included: each leader unit is a region), and :meth:`GroupPruning.tied`
masks every other producing slice of the group (the *followers*) with its leader unit's
state, so a pruned unit is dead everywhere and :func:`~emrakul.export.lyse` can remove it (the
grouping of Fang et al. 2023, "DepGraph"). A unit's importance is the controller's score of the
leader's slice; :meth:`GroupPruning.group_magnitude` replaces it by the group's magnitude over
all producing members (DepGraph's group importance) for magnitude-ranking controllers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.controllers.base import Controller
from emrakul.export.depgraph import DependencyGraph, Group
from emrakul.masks.structures import Structure, Units, Unstructured
from emrakul.surgery import lifecycle
from emrakul.wrapper import masked
from emrakul.wrapper.state import find_state


class Follower(NamedTuple):
    """A producing slice tied to its group's leader: ``path`` axis ``axis`` positions
    ``positions[u]`` are zero while leader unit ``leader_index[u]`` is not ALIVE."""

    path: str
    axis: int
    positions: np.ndarray
    leader: str
    leader_axis: int
    leader_index: np.ndarray


class GroupPruning(NamedTuple):
    """What :func:`group_pruning` chose (paths are relative to the pruned collection).

    Attributes:
      leaders: leaf path -> its unit axis (pruned by the wrapper with ``Units(axis)``).
      followers: the tied producing slices.
      skipped: groups with no leader (no producing kernel left free), with why.
    """

    leaders: dict[str, int]
    followers: tuple[Follower, ...]
    skipped: dict[str, str]

    def filter(self, path: tuple, leaf: Any) -> bool:
        """``wrap(filter=...)``: prune exactly the leaders."""
        del leaf
        return jax.tree_util.keystr(path) in self.leaders

    def structure(self, path: tuple, leaf: Any) -> Structure:
        """``wrap(structure=...)``: ``Units`` along each leader's unit axis."""
        del leaf
        axis = self.leaders.get(jax.tree_util.keystr(path))
        return Unstructured() if axis is None else Units(axis)

    def tied(self, params: Any, opt_state: Any) -> Any:
        """The forward-pass params: ``emrakul.masked`` with every follower tied to its leader.

        Followers are multiplied by their leader unit's alive flag (not straight-through: a dead
        unit's followers get no gradient), so a pruned unit produces exactly zero.
        """
        eff = masked(params, opt_state)
        state = find_state(opt_state).life.state
        flat, treedef = jax.tree_util.tree_flatten_with_path(eff)
        life = {
            jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(state)[0]
        }
        leaves = {jax.tree_util.keystr(p): x for p, x in flat}
        for f in self.followers:
            s = life[f.leader]
            unit_alive = jnp.moveaxis(s == lifecycle.ALIVE, f.leader_axis, 0)
            unit_alive = unit_alive.reshape(unit_alive.shape[0], -1).any(axis=1)
            x = leaves[f.path]
            keep = jnp.ones(x.shape[f.axis], x.dtype)
            keep = keep.at[f.positions.ravel()].set(
                jnp.repeat(unit_alive[f.leader_index], f.positions.shape[1]).astype(x.dtype)
            )
            shape = [1] * x.ndim
            shape[f.axis] = -1
            leaves[f.path] = x * keep.reshape(shape)
        return treedef.unflatten([leaves[jax.tree_util.keystr(p)] for p, _ in flat])

    def group_magnitude(self, controller: Controller) -> Controller:
        """``controller`` ranking each leader unit by its group's magnitude instead of its own.

        The drop score of a leader unit becomes the mean over the group's producing members of
        the mean ``|w|`` of the unit's slices (DepGraph's group importance with an L1 norm and a
        mean over members, Fang et al. 2023), spread over the unit's weights so that ``Units``
        selection (which sums a unit's scores) ranks by it. Meant for controllers that rank by
        magnitude (GMP, one-shot): any other score is replaced, not combined.
        """

        def decide(obs: Any, state: Any) -> tuple:
            decision, state = controller.decide(obs, state)
            scores = _group_scores(self, obs.params)

            def swap(path: tuple, score: Any) -> Any:
                key = jax.tree_util.keystr(path)
                if key not in scores:
                    return score
                axis = self.leaders[key] % score.ndim
                shape = [1] * score.ndim
                shape[axis] = -1
                per_weight = scores[key] / (score.size // score.shape[axis])
                return jnp.broadcast_to(per_weight.reshape(shape), score.shape).astype(score.dtype)

            drop = jax.tree_util.tree_map_with_path(swap, decision.drop_score)
            return decision._replace(drop_score=drop), state

        return controller._replace(name=f"{controller.name}+group", decide=decide)


def collection_prefix(collection: str | None) -> str:
    """The leaf-path prefix of ``variables[collection]`` (empty for the variables themselves)."""
    return "" if collection is None else jax.tree_util.keystr((jax.tree_util.DictKey(collection),))


def _slice_means(x: jax.Array, axis: int, positions: np.ndarray) -> jax.Array:
    """Mean ``|x|`` of each unit's slices (``positions[u]`` along ``axis``): float32 [units]."""
    x = jnp.moveaxis(jnp.abs(x.astype(jnp.float32)), axis, 0)
    per = x.reshape(x.shape[0], -1).mean(axis=1)
    return per[positions].mean(axis=1)


def _group_scores(groups: GroupPruning, params: Any) -> dict[str, jax.Array]:
    """Leader path -> per leader position, the mean over the group's producing members (the
    leader included) of the mean ``|w|`` of the unit's slices."""
    leaves = {
        jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    sums: dict[str, list] = {}
    for path, axis in groups.leaders.items():
        n = leaves[path].shape[axis]
        sums[path] = [_slice_means(leaves[path], axis, np.arange(n)[:, None])]
    for f in groups.followers:
        n = leaves[f.leader].shape[f.leader_axis]
        per_unit = _slice_means(leaves[f.path], f.axis, f.positions)
        sums[f.leader].append(jnp.zeros(n, jnp.float32).at[f.leader_index].set(per_unit))
    return {path: jnp.mean(jnp.stack(terms), axis=0) for path, terms in sums.items()}


def _leader(group: Group, prefix: str, taken: set, shapes: dict, prefer: dict) -> Any:
    """A preferred leader if the group has one, else the largest producing kernel (rank >= 2,
    one slice per unit) not leading another group."""
    cands = [
        m
        for m in group.members
        if not m.consumer
        and m.path.startswith(prefix)
        and m.positions.shape[1] == 1
        and len(shapes[m.path]) >= 2
        and m.path not in taken
    ]
    for m in cands:
        if prefer.get(m.path[len(prefix) :]) == m.axis:
            return m
    return max(cands, key=lambda m: int(np.prod(shapes[m.path])), default=None)


def group_pruning(
    graph: DependencyGraph,
    variables: Any,
    collection: str | None = "params",
    prefer: dict[str, int] | None = None,
) -> GroupPruning:
    """Leaders and followers for every group of ``graph`` (see the module docstring).

    Args:
      graph: :func:`~emrakul.export.dependency_graph` of the model.
      variables: the variables the graph was traced with.
      collection: the collection the wrapper prunes (``variables[collection]``), or None when
        the wrapper prunes ``variables`` itself.
      prefer: leaders to keep where a group has them (``GroupPruning.leaders`` of the model
        before a lysis, so the wrapper's filter and structure stay valid).

    Returns:
      The :class:`GroupPruning`.

    Raises:
      ValueError: ``variables`` have no ``collection``.
    """
    if collection is not None and (
        not isinstance(variables, Mapping) or collection not in variables
    ):
        raise ValueError(
            f"variables have no collection {collection!r}; pass collection=None when the wrapper "
            "prunes the variables themselves"
        )
    prefix = collection_prefix(collection)
    shapes = {
        jax.tree_util.keystr(p): np.shape(x)
        for p, x in jax.tree_util.tree_flatten_with_path(variables)[0]
    }
    leaders: dict[str, int] = {}
    followers: list[Follower] = []
    skipped: dict[str, str] = {}
    taken: set = set()
    for g in sorted(graph.groups, key=lambda g: -g.units):
        lead = _leader(g, prefix, taken, shapes, prefer or {})
        if lead is None:
            skipped[g.name] = "no producing kernel with one slice per unit is free to lead it"
            continue
        taken.add(lead.path)
        leaders[lead.path[len(prefix) :]] = lead.axis
        for m in g.members:
            if m.consumer or m is lead or not m.path.startswith(prefix):
                continue
            followers.append(
                Follower(
                    m.path[len(prefix) :],
                    m.axis,
                    m.positions,
                    lead.path[len(prefix) :],
                    lead.axis,
                    lead.positions[:, 0],
                )
            )
    return GroupPruning(leaders, tuple(followers), skipped)
