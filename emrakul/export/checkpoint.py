"""Orbax checkpoints of sparsely encoded params (:mod:`emrakul.export.sparse`).

A checkpoint is an orbax composite of ``arrays`` (``StandardSave`` of the stored arrays, which
orbax chunks and zstd-compresses) and ``meta`` (JSON: leaf paths, formats, shapes, dtypes, N:M
patterns), so it loads without the model's code and its size on disk is the real saving.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree
from emrakul.export.sparse import SparseLeaf, from_sparse, to_sparse

_FORMAT = "emrakul.export/1"


def _key_json(k: Any) -> list:
    """A pytree path key as JSON: ``[kind, value]``."""
    if isinstance(k, jax.tree_util.DictKey):
        return ["key", k.key if isinstance(k.key, int | str) else str(k.key)]
    if isinstance(k, jax.tree_util.SequenceKey):
        return ["idx", k.idx]
    if isinstance(k, jax.tree_util.GetAttrKey):
        return ["attr", k.name]
    return ["other", str(k)]


def checkpoint_bytes(path: str | os.PathLike) -> int:
    """Sum of the sizes of all files under ``path`` (the on-disk size of a checkpoint)."""
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def checkpointer():
    """orbax (imported on use) and a composite checkpointer."""
    import orbax.checkpoint as ocp

    return ocp, ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _describe(sparse: PyTree) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arrays to store (empty ones left out: orbax rejects them) and the JSON meta."""
    flat = jax.tree_util.tree_flatten_with_path(
        sparse, is_leaf=lambda x: isinstance(x, SparseLeaf)
    )[0]
    arrays: dict[str, Any] = {"version": np.ones((1,), np.int32)}  # never an empty tree
    leaves = []
    for i, (path_keys, leaf) in enumerate(flat):
        stored = {k: v for k, v in leaf.arrays.items() if v.size}
        if stored:
            arrays[f"leaf_{i:05d}"] = stored
        leaves.append(
            {
                "path": [_key_json(k) for k in path_keys],
                "format": leaf.format,
                "shape": list(leaf.shape),
                "dtype": leaf.dtype,
                "n": leaf.n,
                "m": leaf.m,
                "axis": leaf.axis,
                "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in leaf.arrays.items()},
            }
        )
    return arrays, {"format": _FORMAT, "leaves": leaves}


def save(
    path: str | os.PathLike,
    params: PyTree,
    masks: Any = None,
    *,
    nm_sizes: Sequence[int] = (4, 8),
    overwrite: bool = False,
) -> int:
    """Saves masked params sparsely (:func:`~emrakul.export.to_sparse`) as an orbax checkpoint.

    The checkpoint is a composite of ``arrays`` (orbax ``StandardSave`` of the stored arrays)
    and ``meta`` (JSON: leaf paths, formats, shapes, dtypes, N:M patterns).

    Args:
      path: the checkpoint directory (must not exist unless ``overwrite``).
      params: the dense params.
      masks: masks in any form :func:`~emrakul.export.resolve_masks` accepts; ``None`` stores
        everything dense.
      nm_sizes: group sizes tried for N:M detection.
      overwrite: replace an existing checkpoint at ``path``.

    Returns:
      The checkpoint's size on disk in bytes.

    Raises:
      ValueError: bad masks, or ``path`` exists and ``overwrite`` is False.
    """
    if masks is None:
        masks = jax.tree.map(lambda _: np.bool_(True), params)
    arrays, meta = _describe(to_sparse(params, masks, nm_sizes=nm_sizes))
    return write_composite(path, arrays, meta, overwrite)


def write_composite(path: str | os.PathLike, arrays: dict, meta: dict, overwrite: bool) -> int:
    """Writes ``arrays`` (orbax ``StandardSave``) and ``meta`` (JSON) as one composite checkpoint.

    Returns:
      Its size on disk in bytes.

    Raises:
      ValueError: ``path`` exists and ``overwrite`` is False.
    """
    ocp, ckpt = checkpointer()
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite=True to replace it")
    ckpt.save(
        path,
        args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
        force=overwrite,
    )
    ckpt.close()
    return checkpoint_bytes(path)


def read_meta(ocp: Any, ckpt: Any, path: str, fmt: str = _FORMAT, writer: str = "save") -> dict:
    """The JSON meta of a composite checkpoint in format ``fmt``; anything else raises
    ``ValueError`` naming the function that writes that format."""
    try:
        meta = ckpt.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # orbax raises various types for a foreign layout
        raise ValueError(f"{path} is not a checkpoint written by emrakul.export.{writer}") from e
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ValueError(f"{path} is not a checkpoint written by emrakul.export.{writer}")
    return meta


def _read_leaves(ocp: Any, ckpt: Any, path: str, meta: dict[str, Any]) -> list[SparseLeaf]:
    """The stored leaves, empty arrays recreated from their recorded shapes."""
    abstract: dict[str, Any] = {"version": jax.ShapeDtypeStruct((1,), np.int32)}
    for i, leaf in enumerate(meta["leaves"]):
        stored = {
            k: jax.ShapeDtypeStruct(tuple(s), jnp.dtype(d))
            for k, (s, d) in leaf["arrays"].items()
            if math.prod(s)
        }
        if stored:
            abstract[f"leaf_{i:05d}"] = stored
    restored = ckpt.restore(
        path, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
    ).arrays
    out = []
    for i, leaf in enumerate(meta["leaves"]):
        got = restored.get(f"leaf_{i:05d}", {})
        arrays = {
            k: np.asarray(got[k]) if math.prod(s) else np.zeros(tuple(s), jnp.dtype(d))
            for k, (s, d) in leaf["arrays"].items()
        }
        out.append(
            SparseLeaf(
                leaf["format"],
                tuple(leaf["shape"]),
                leaf["dtype"],
                arrays,
                leaf["n"],
                leaf["m"],
                leaf["axis"],
            )
        )
    return out


def _rebuild(paths: list, leaves: list[SparseLeaf], target: PyTree | None) -> PyTree:
    """The tree of sparse leaves: ``target``'s structure, or nested dicts from the paths."""
    if target is not None:
        flat, treedef = jax.tree_util.tree_flatten_with_path(target)
        want = [[_key_json(k) for k in p] for p, _ in flat]
        if want != paths:
            raise ValueError(f"target's leaves {len(want)} do not match the checkpoint's")
        return treedef.unflatten(leaves)
    sparse: dict = {}
    for keys, leaf in zip(paths, leaves, strict=True):
        if not keys or any(kind != "key" for kind, _ in keys):
            raise ValueError(
                "the checkpoint holds a tree that is not nested dicts; pass target= with the "
                "params' structure"
            )
        node = sparse
        for _, k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1][1]] = leaf
    return sparse


def load(path: str | os.PathLike, target: PyTree | None = None) -> tuple[PyTree, PyTree]:
    """Loads a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint directory.
      target: optional tree with the params' structure (values unused); required when the
        saved tree was not made of nested dicts (e.g. lists or NamedTuples).

    Returns:
      ``(params, masks)`` as :func:`~emrakul.export.from_sparse`: the params give the masked
      model's outputs.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not an Emrakul export, or ``target`` does not match the saved leaves.
    """
    ocp, ckpt = checkpointer()
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    meta = read_meta(ocp, ckpt, path)
    leaves = _read_leaves(ocp, ckpt, path, meta)
    ckpt.close()
    paths = [leaf["path"] for leaf in meta["leaves"]]
    return from_sparse(_rebuild(paths, leaves, target))
