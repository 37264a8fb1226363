"""Orbax checkpoints of a lysed (compacted) model, loaded back into a runnable model.

A checkpoint is an orbax composite of ``arrays`` (``StandardSave`` of the compact variables'
leaves) and ``meta`` (JSON: the original leaves' paths, shapes and dtypes, and the plan of what
was removed). Loading needs the original apply function and the original variables' structure
(e.g. ``jax.eval_shape(model.init, ...)``): code cannot be stored, and the compact model is the
original program replayed without the removed units (:func:`~emrakul.export.compact_apply`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.export.checkpoint import checkpointer, read_meta, write_composite
from emrakul.export.depgraph import leaf_paths
from emrakul.export.lysis import Lineage, Plan, compact_apply

_FORMAT = "emrakul.export.lysis/1"


def _compact_shape(shape: tuple, cuts: tuple) -> tuple:
    shape = list(shape)
    for axis, pos in cuts:
        shape[axis] -= len(pos)
    return tuple(shape)


def plan_to_json(plan: Plan) -> dict:
    """``plan`` as JSON-able lists (path -> ``[[axis, positions], ...]``)."""
    return {p: [[int(a), np.asarray(pos).tolist()] for a, pos in cuts] for p, cuts in plan.items()}


def plan_from_json(data: dict) -> Plan:
    """The plan :func:`plan_to_json` wrote."""
    return {
        p: tuple((int(a), np.asarray(pos, np.int64)) for a, pos in cuts) for p, cuts in data.items()
    }


def save_lysed(
    path: str | os.PathLike, variables: Any, apply: Callable, *, overwrite: bool = False
) -> int:
    """Saves a compact model (``Lysis.variables`` and ``Lysis.apply``) as an orbax checkpoint.

    Args:
      path: the checkpoint directory (must not exist unless ``overwrite``).
      variables: the compact variables.
      apply: the compact apply function (it carries its :class:`~emrakul.export.lysis.Lineage`).
      overwrite: replace an existing checkpoint at ``path``.

    Returns:
      The checkpoint's size on disk in bytes.

    Raises:
      ValueError: ``apply`` has no lineage, the variables do not have the compact shapes, or
        ``path`` exists and ``overwrite`` is False.
    """
    lineage: Lineage | None = getattr(apply, "lineage", None)
    if lineage is None:
        raise ValueError("apply is not a compact model's apply function (no lineage)")
    paths = leaf_paths(lineage.template)
    tmpl = jax.tree_util.tree_leaves(lineage.template)
    leaves = jax.tree_util.tree_leaves(variables)
    if len(leaves) != len(tmpl):
        raise ValueError(f"variables have {len(leaves)} leaves, the compact model {len(tmpl)}")
    for p, t, x in zip(paths, tmpl, leaves, strict=True):
        want = _compact_shape(t.shape, lineage.plan.get(p, ()))
        if tuple(np.shape(x)) != want:
            raise ValueError(f"variables{p} has shape {np.shape(x)}, the compact model {want}")
    meta = {
        "format": _FORMAT,
        "leaves": [
            {"path": p, "shape": list(t.shape), "dtype": str(t.dtype)}
            for p, t in zip(paths, tmpl, strict=True)
        ],
        "plan": plan_to_json(lineage.plan),
    }
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    return write_composite(path, arrays, meta, overwrite)


def load_lysed(path: str | os.PathLike, apply_fn: Callable, template: Any) -> tuple[Any, Callable]:
    """Loads a checkpoint of :func:`save_lysed` into ``(compact variables, compact apply)``.

    Args:
      path: the checkpoint directory.
      apply_fn: the original model's ``apply(variables, *args)``.
      template: the original variables or their shapes (``jax.eval_shape(model.init, ...)``).

    Returns:
      The compact variables (jax arrays, in ``template``'s structure) and apply function.

    Raises:
      ValueError: not such a checkpoint, or ``template`` differs from the saved original.
    """
    ocp, ckpt = checkpointer()
    path = os.path.abspath(os.fspath(path))
    meta = read_meta(ocp, ckpt, path, _FORMAT, "save_lysed")
    flat, treedef = jax.tree_util.tree_flatten(template)
    paths = leaf_paths(template)
    saved = [(m["path"], tuple(m["shape"]), m["dtype"]) for m in meta["leaves"]]
    mine = [(p, tuple(x.shape), str(jnp.dtype(x.dtype))) for p, x in zip(paths, flat, strict=True)]
    if saved != mine:
        diff = next((s, m) for s, m in zip([*saved, None], [*mine, None], strict=False) if s != m)
        raise ValueError(
            f"template differs from the saved original: saved {diff[0]}, given {diff[1]}"
        )
    plan = plan_from_json(meta["plan"])
    abstract = {
        f"leaf_{i:05d}": jax.ShapeDtypeStruct(_compact_shape(s, plan.get(p, ())), jnp.dtype(d))
        for i, (p, s, d) in enumerate(saved)
    }
    arrays = ckpt.restore(
        path, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
    ).arrays
    ckpt.close()
    variables = treedef.unflatten([jnp.asarray(arrays[f"leaf_{i:05d}"]) for i in range(len(saved))])
    return variables, compact_apply(apply_fn, template, plan)
