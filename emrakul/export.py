"""Real savings from a pruned network: compaction and sparse export.

Training with Emrakul keeps every weight in a dense array and multiplies by a mask, so a pruned
model is as large and as slow as the dense one until it is exported. This module turns masks into
savings, after training, on the host (numpy; the output shapes depend on the mask values, so
nothing here is jitted):

* :func:`compact` physically removes dead output units / channels of a plain sequential stack of
  ``Dense`` and ``Conv`` layers (``hosts.MLP``, ``hosts.CNN1D``) together with the matching input
  rows of the layer that consumes them, and :func:`compact_model` builds the smaller Flax module
  (structured pruning pays off on any hardware: the matmuls themselves shrink; Li et al. 2017,
  "Pruning Filters for Efficient ConvNets").
* :func:`to_sparse` / :func:`from_sparse` and :func:`save` / :func:`load` store masked kernels
  sparsely in an orbax checkpoint: unstructured kernels as values plus relative (delta) indices
  or a bitmap, N:M kernels as compressed values plus packed in-group indices (Han et al. 2015,
  "Learning both weights and connections for efficient neural networks", and its follow-up
  "Deep Compression", Han et al. 2016, for the relative indices; Mishra et al. 2021,
  "Accelerating Sparse Deep Neural Networks", for the 2:4 values + 2-bit metadata layout).

Masks may be given as a mask tree (:mod:`emrakul.masks`: bool per pruned leaf, scalar ``True``
for unpruned leaves), as a lifecycle state tree (``int8``, ``ALIVE`` = kept; sedated and lysed
weights are dropped), as a :class:`~emrakul.surgery.lifecycle.Lifecycle`, or as the wrapper's
optimizer state (an :class:`~emrakul.wrapper.EmrakulState`, possibly inside a chain), in which
case the exported weights are ``emrakul.masked(params, state)`` (gates included).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree, check_same_structure, is_floating, path_str
from emrakul.masks.nm import is_nm
from emrakul.surgery.lifecycle import ALIVE, LYSED, Lifecycle, alive_mask
from emrakul.wrapper import EmrakulState, masked

# --------------------------------------------------------------------------------------------
# masks in any accepted form -> (effective params, bool mask tree)


def _find_emrakul_state(tree: Any) -> EmrakulState | None:
    if isinstance(tree, EmrakulState):
        return tree
    if isinstance(tree, Lifecycle):
        return None
    found = [
        s
        for s in jax.tree_util.tree_leaves(tree, is_leaf=lambda s: isinstance(s, EmrakulState))
        if isinstance(s, EmrakulState)
    ]
    if len(found) > 1:
        raise ValueError(f"found {len(found)} Emrakul states in masks; pass exactly one")
    return found[0] if found else None


def resolve_masks(params: PyTree, masks: Any) -> tuple[PyTree, PyTree]:
    """The effective (masked) params and a bool mask tree, from masks in any accepted form.

    Args:
      params: the dense parameters.
      masks: a bool mask tree, an ``int8`` lifecycle state tree (``ALIVE`` = kept), a
        :class:`~emrakul.surgery.lifecycle.Lifecycle`, or an optimizer state holding one
        :class:`~emrakul.wrapper.EmrakulState` (then the params are ``emrakul.masked``).

    Returns:
      ``(params with masked entries set to zero, mask tree)``; mask leaves are numpy bool arrays
      of the param's shape (pruned) or ``np.bool_(True)`` markers (not pruned).

    Raises:
      ValueError: structures differ, a pruned mask's shape differs from its param's, mask leaves
        are neither all bool nor all int8 lifecycle states, or a pruned param is not floating.
    """
    state = _find_emrakul_state(masks)
    if state is not None:
        params = masked(params, state)
        masks = state.life.state
    elif isinstance(masks, Lifecycle):
        masks = masks.state
    check_same_structure(params, masks, "params", "masks")
    leaves = [np.asarray(m) for m in jax.tree.leaves(masks)]
    kinds = {m.dtype for m in leaves}
    if kinds <= {np.dtype(bool)}:
        pass
    elif kinds <= {np.dtype(np.int8)}:
        for m in leaves:
            if m.size and (m.min() < ALIVE or m.max() > LYSED):
                raise ValueError(
                    f"int8 masks are read as lifecycle states ({ALIVE}=alive ... {LYSED}=lysed); "
                    f"got values in [{m.min()}, {m.max()}]"
                )
        leaves = [np.asarray(m) for m in jax.tree.leaves(alive_mask(masks))]
    else:
        raise ValueError(
            "masks must be a bool mask tree (scalar True for unpruned leaves) or an int8 "
            f"lifecycle state tree; got leaf dtypes {sorted(str(k) for k in kinds)}"
        )
    out_params, out_masks = [], []
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    for (path, p), m in zip(flat, leaves, strict=True):
        if m.ndim == 0:
            if not bool(m):
                raise ValueError(
                    f"scalar mask False for '{path_str(path)}': a scalar mask is the 'not pruned' "
                    "marker and must be True; use a bool array of the param's shape to prune"
                )
            out_params.append(p)
            out_masks.append(np.bool_(True))
            continue
        if np.shape(m) != np.shape(p):
            raise ValueError(
                f"mask for '{path_str(path)}' has shape {np.shape(m)}, param has {np.shape(p)} "
                "(use the scalar True for a leaf that is not pruned)"
            )
        if not is_floating(p):
            raise ValueError(f"cannot mask non-floating leaf '{path_str(path)}'")
        pa = np.asarray(p)
        out_params.append(np.where(m, pa, np.zeros((), pa.dtype)))
        out_masks.append(m)
    return treedef.unflatten(out_params), treedef.unflatten(out_masks)


# --------------------------------------------------------------------------------------------
# compaction of a sequential Dense / Conv stack

_LAYER = re.compile(r"^(Dense|Conv1D|Conv)_(\d+)$")
_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "identity": lambda x: x,
}


class Compacted(NamedTuple):
    """The result of :func:`compact`.

    Attributes:
      params: the smaller dense params (same layer names; masked entries are zero, so the model
        needs no mask), wrapped in ``{"params": ...}`` if the input was.
      masks: the masks restricted to the kept units (bool arrays / scalar True markers), to keep
        training the compact model with the same sparsity pattern (a pruned bias entry that
        received a folded constant is marked kept).
      widths: the new output width of every layer but the last, in layer order (for
        ``hosts.MLP`` the new ``features``; for ``hosts.CNN1D`` the channels, then ``hidden``).
      kept: layer name -> int array of the original indices of its kept output units.
      retained_dead: layer name -> number of dead units that had to be kept (a dead conv channel
        with ``act(bias) != 0`` feeding another conv: see :func:`compact`).
    """

    params: dict
    masks: dict
    widths: tuple[int, ...]
    kept: dict[str, np.ndarray]
    retained_dead: dict[str, int]


def _layers(params: Mapping) -> list[str]:
    """Layer names in forward order (convs, then denses); raises for anything else."""
    if not isinstance(params, Mapping) or not params:
        raise ValueError(
            f"compact needs a non-empty dict of layers (Dense_i / Conv1D_i / Conv_i), got "
            f"{type(params).__name__}"
        )
    groups: dict[str, list[int]] = {}
    for name in params:
        match = _LAYER.match(str(name))
        if match is None:
            raise ValueError(
                f"cannot compact: '{name}' is not a Dense_i / Conv1D_i / Conv_i layer; only plain "
                "sequential stacks (convs, then denses) are supported"
            )
        groups.setdefault(match.group(1), []).append(int(match.group(2)))
        layer = params[name]
        if not isinstance(layer, Mapping) or "kernel" not in layer:
            raise ValueError(f"cannot compact: layer '{name}' has no 'kernel'")
        for leaf in layer:
            if leaf not in ("kernel", "bias"):
                raise ValueError(
                    f"cannot compact: unknown leaf '{name}/{leaf}' (only kernel and bias are "
                    "understood; normalisation layers and the like are not supported)"
                )
            if not isinstance(layer[leaf], np.ndarray | jax.Array) or not is_floating(layer[leaf]):
                raise ValueError(
                    f"cannot compact: leaf '{name}/{leaf}' is {type(layer[leaf]).__name__}, "
                    "not a floating array"
                )
    convs = [k for k in groups if k != "Dense"]
    if len(convs) > 1:
        raise ValueError(f"cannot compact: mixed conv layer kinds {sorted(convs)}; order unknown")
    order = convs + (["Dense"] if "Dense" in groups else [])
    names = []
    for kind in order:
        idx = sorted(groups[kind])
        if idx != list(range(len(idx))):
            raise ValueError(
                f"cannot compact: non-sequential layer names {[f'{kind}_{i}' for i in idx]}; "
                f"expected {kind}_0 ... {kind}_{len(idx) - 1}"
            )
        names += [f"{kind}_{i}" for i in idx]
    for name in names:
        key = next(k for k in params if str(k) == name)
        kernel = params[key]["kernel"]
        dense = name.startswith("Dense")
        if (np.ndim(kernel) != 2) if dense else (np.ndim(kernel) < 3):
            raise ValueError(
                f"cannot compact: '{name}/kernel' has shape {np.shape(kernel)}; expected "
                + ("[in, out]" if dense else "[*window, in, out]")
            )
        if "bias" in params[key] and np.shape(params[key]["bias"]) != np.shape(kernel)[-1:]:
            raise ValueError(
                f"cannot compact: '{name}/bias' has shape {np.shape(params[key]['bias'])}, "
                f"kernel has {np.shape(kernel)[-1]} outputs"
            )
    return names


def _activation(activation: str | Callable) -> Callable[[np.ndarray], np.ndarray]:
    if callable(activation):
        return lambda x: np.asarray(activation(jnp.asarray(x)))
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use {sorted(_ACTIVATIONS)} or a fn")
    return _ACTIVATIONS[activation]


def _consumer_view(prev: str, nxt: str, w_next: np.ndarray, width: int) -> np.ndarray:
    """The consumer's kernel as [positions, width, out]: its rows grouped by producer unit."""
    in_dim = w_next.shape[-2]
    if prev.startswith("Dense") and not nxt.startswith("Dense"):
        raise ValueError(f"cannot compact: a conv layer '{nxt}' after a dense layer '{prev}'")
    if nxt.startswith("Dense") and not prev.startswith("Dense"):
        # Flatten of a channels-last map: rows are position-major, channel-minor.
        if in_dim % width:
            raise ValueError(
                f"cannot compact: '{nxt}' has {in_dim} inputs, not a multiple of the {width} "
                f"channels of '{prev}' (flatten of [positions, channels] expected)"
            )
        return w_next.reshape(in_dim // width, width, w_next.shape[-1])
    if in_dim != width:
        raise ValueError(
            f"cannot compact: shape mismatch, '{prev}' has {width} outputs but '{nxt}/kernel' "
            f"has shape {w_next.shape} ({in_dim} inputs)"
        )
    return w_next.reshape(-1, width, w_next.shape[-1])


def compact(
    params: PyTree, masks: Any, *, activation: str | Callable[[jax.Array], jax.Array] = "relu"
) -> Compacted:
    """Removes dead output units / channels of a sequential Dense / Conv stack.

    The stack is ``Conv*_0 ... Conv*_k`` (optional; kernels ``[*window, in, out]``) then
    ``Dense_0 ... Dense_L`` (kernels ``[in, out]``), each with an optional ``bias``, as in
    ``hosts.MLP`` and ``hosts.CNN1D``. A unit is *dead* when its whole output column of the
    kernel is masked (not ALIVE). It still emits the constant ``act(bias)``, so it is removed
    only when that leaves the outputs unchanged:

    * ``act(bias) == 0``: dropped with its consumer's input rows;
    * the consumer is a Dense layer (directly, or after the flatten of a conv map): dropped, and
      the constant is folded into the consumer's bias, ``b_next += act(b_dead) @ W_next[rows]``;
    * the consumer is a conv: *kept* (its zero padding makes the constant's contribution depend
      on the position, so it is not a bias), counted in ``retained_dead``.

    A unit whose consumer rows are all masked is removed too (it contributes nothing). The last
    layer's units are never removed. If every unit of a layer would go, one is kept with zero
    outgoing weights, so no width is zero.

    Assumptions (not checkable from the params; the outputs are wrong if they do not hold):
    every hidden layer's output goes through the same elementwise ``activation`` and nothing
    else, except for conv maps a per-channel pooling that maps a constant map to that constant
    (max or average pooling) and, before the first Dense, a flatten of ``[positions, channels]``
    (channels minor), as in ``hosts.CNN1D``. Dense -> conv transitions, mixed conv kinds,
    non-consecutive layer names, other leaves (norm scales...) and shape mismatches between
    consecutive layers raise ``ValueError`` rather than being guessed.

    Args:
      params: the dense params (a dict of layers, or ``{"params": {...}}``).
      masks: a mask tree, lifecycle state tree, ``Lifecycle`` or the wrapper's optimizer state
        (see :func:`resolve_masks`); may also be wrapped in ``{"params": ...}``.
      activation: ``"relu"`` (the hosts'), ``"tanh"``, ``"identity"`` or a jnp function.

    Returns:
      A :class:`Compacted`; the compact model computes the same function as the masked one.

    Raises:
      ValueError: a graph this function cannot compact (reason named), or bad masks.
    """
    wrapped = isinstance(params, Mapping) and set(params) == {"params"}
    if wrapped:
        params = params["params"]
        if isinstance(masks, Mapping) and set(masks) == {"params"}:
            masks = masks["params"]
    act = _activation(activation)
    names = _layers(params)  # validate before touching the masks
    eff, mask_tree = resolve_masks(params, masks)
    keys = {str(k): k for k in eff}
    w, wm, b, bm, has_bias = {}, {}, {}, {}, {}
    for name in names:
        layer, lmask = eff[keys[name]], mask_tree[keys[name]]
        w[name] = np.array(layer["kernel"])
        wm[name] = np.broadcast_to(lmask["kernel"], w[name].shape).copy()
        has_bias[name] = "bias" in layer
        out = w[name].shape[-1]
        b[name] = np.array(layer["bias"]) if has_bias[name] else np.zeros(out, w[name].dtype)
        bm[name] = np.broadcast_to(lmask["bias"] if has_bias[name] else True, (out,)).copy()
    kept, retained = {}, {}
    for prev, nxt in itertools.pairwise(names):
        width = w[prev].shape[-1]
        next_shape = w[nxt].shape
        view = _consumer_view(prev, nxt, w[nxt], width).copy()
        mview = _consumer_view(prev, nxt, wm[nxt], width).copy()
        dead = ~wm[prev].reshape(-1, width).any(axis=0)
        unused = ~mview.any(axis=(0, 2))
        const = act(b[prev]).astype(np.float64)
        foldable = nxt.startswith("Dense") and has_bias[nxt]
        fold = dead & ~unused & (const != 0) & foldable
        remove = unused | (dead & ((const == 0) | foldable))
        if fold.any():
            delta = np.einsum("pjo,j->o", view[:, fold].astype(np.float64), const[fold])
            b[nxt] = (b[nxt].astype(np.float64) + delta).astype(b[nxt].dtype)
            bm[nxt] |= delta != 0  # a folded constant makes a masked bias entry live
        if remove.all():  # keep one placeholder with zero outgoing weights
            remove[0] = False
            view[:, 0] = 0
            mview[:, 0] = False
        keep = np.flatnonzero(~remove)
        kept[prev] = keep
        retained[prev] = int(np.sum(dead & ~remove))
        w[prev], wm[prev] = w[prev][..., keep], wm[prev][..., keep]
        b[prev], bm[prev] = b[prev][keep], bm[prev][keep]
        new_next = (*next_shape[:-2], -1, next_shape[-1])
        w[nxt] = view[:, keep].reshape(new_next)
        wm[nxt] = mview[:, keep].reshape(new_next)
    kept[names[-1]] = np.arange(w[names[-1]].shape[-1])
    retained[names[-1]] = 0
    new_params, new_masks = {}, {}
    for name in names:
        lmask = mask_tree[keys[name]]
        new_params[keys[name]] = {"kernel": jnp.asarray(w[name])}
        new_masks[keys[name]] = {"kernel": wm[name] if np.ndim(lmask["kernel"]) else np.bool_(True)}
        if has_bias[name]:
            new_params[keys[name]]["bias"] = jnp.asarray(b[name])
            new_masks[keys[name]]["bias"] = bm[name] if np.ndim(lmask["bias"]) else np.bool_(True)
    widths = tuple(int(w[name].shape[-1]) for name in names[:-1])
    if wrapped:
        new_params, new_masks = {"params": new_params}, {"params": new_masks}
    return Compacted(new_params, new_masks, widths, kept, retained)


def compact_model(module: Any, compacted: Compacted) -> Any:
    """The Flax module of the compact network: ``hosts.MLP`` or ``hosts.CNN1D`` with new widths.

    Args:
      module: the original ``emrakul.lab.hosts.MLP`` or ``emrakul.lab.hosts.CNN1D``.
      compacted: the result of :func:`compact` on its params.

    Returns:
      A module whose ``apply({"params": compacted.params}, x)`` (or ``apply(compacted.params,
      x)`` if the params were wrapped) equals the masked original's output.

    Raises:
      ValueError: another module type, or a layer count that does not match.
    """
    from emrakul.lab.hosts.classifier import CNN1D, MLP  # imported on use: hosts load the data code

    widths = tuple(compacted.widths)
    if isinstance(module, MLP):
        if len(widths) != len(module.features):
            raise ValueError(f"MLP has {len(module.features)} hidden layers, got widths {widths}")
        return MLP(features=widths, num_classes=module.num_classes)
    if isinstance(module, CNN1D):
        if len(widths) != len(module.channels) + 1:
            raise ValueError(
                f"CNN1D has {len(module.channels)} conv layers + 1 hidden, got widths {widths}"
            )
        return CNN1D(
            channels=widths[:-1],
            kernel_size=module.kernel_size,
            hidden=widths[-1],
            num_classes=module.num_classes,
        )
    raise ValueError(
        f"compact_model knows hosts.MLP and hosts.CNN1D, not {type(module).__name__}; build the "
        "module yourself from Compacted.widths"
    )


# --------------------------------------------------------------------------------------------
# sparse storage


@dataclasses.dataclass(frozen=True, eq=False)
class SparseLeaf:
    """One leaf stored sparsely (a pytree leaf: not registered as a node).

    Attributes:
      format: ``"dense"`` (not pruned: ``value``), ``"delta"`` (``values`` + uint8 relative
        indices ``gaps`` with escapes ``0`` resolved by int32 ``long_gaps``), ``"bitmap"``
        (``values`` + ``bits``, the packed mask), or ``"nm"`` (``values`` [..., groups, n] along
        ``axis`` moved last + ``index``, the packed in-group positions).
      shape: the dense shape.
      dtype: the dense dtype's name.
      arrays: the stored arrays by name.
      n, m, axis: the N:M pattern (``"nm"`` only).
    """

    format: str
    shape: tuple[int, ...]
    dtype: str
    arrays: dict[str, np.ndarray]
    n: int = 0
    m: int = 0
    axis: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays."""
        return int(sum(a.nbytes for a in self.arrays.values()))


def _index_bits(m: int) -> int:
    return next(b for b in (1, 2, 4, 8) if (1 << b) >= m)


def _pack(idx: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    flat = idx.ravel().astype(np.uint8)
    flat = np.pad(flat, (0, -flat.size % per)).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    out = (packed[:, None] >> shifts) & np.uint8((1 << bits) - 1)
    return out.reshape(-1)[:count]


def _detect_nm(mask: np.ndarray, nm_sizes: Sequence[int]) -> tuple[int, int, int] | None:
    """``(n, m, axis)`` if every group of ``m`` along ``axis`` keeps exactly ``n``, 0 < n < m."""
    for m in nm_sizes:
        if m < 2 or m > 256:
            continue
        for axis in reversed(range(mask.ndim)):
            if mask.shape[axis] % m:
                continue
            moved = np.moveaxis(mask, axis, -1)
            counts = moved.reshape(*moved.shape[:-1], -1, m).sum(-1)
            n = int(counts.flat[0])
            if 0 < n < m and np.all(counts == n) and bool(is_nm(mask, n, m, axis, exact=True)):
                return n, m, axis
    return None


def _encode(p: np.ndarray, mask: np.ndarray | None, nm_sizes: Sequence[int]) -> SparseLeaf:
    dtype = str(p.dtype)
    if mask is None:
        return SparseLeaf("dense", p.shape, dtype, {"value": p})
    pattern = _detect_nm(mask, nm_sizes)
    if pattern is not None:
        n, m, axis = pattern
        moved = np.moveaxis(p, axis, -1)
        groups = moved.reshape(*moved.shape[:-1], -1, m)
        gmask = np.moveaxis(mask, axis, -1).reshape(groups.shape)
        pos = np.argsort(~gmask, axis=-1, kind="stable")[..., :n]
        values = np.take_along_axis(groups, pos, axis=-1)
        index = _pack(pos, _index_bits(m))
        return SparseLeaf("nm", p.shape, dtype, {"values": values, "index": index}, n, m, axis)
    flat_mask = mask.ravel()
    values = p.ravel()[flat_mask]
    idx = np.flatnonzero(flat_mask)
    gaps = np.diff(idx, prepend=-1)
    small = gaps < 256
    delta_bytes = idx.size + 4 * int(np.sum(~small))
    if delta_bytes < -(-mask.size // 8):
        if mask.size >= 2**31:
            raise ValueError(f"leaf of {mask.size} entries is too large for int32 long gaps")
        arrays = {
            "values": values,
            "gaps": np.where(small, gaps, 0).astype(np.uint8),
            "long_gaps": gaps[~small].astype(np.int32),
        }
        return SparseLeaf("delta", p.shape, dtype, arrays)
    return SparseLeaf("bitmap", p.shape, dtype, {"values": values, "bits": np.packbits(flat_mask)})


def _decode(leaf: SparseLeaf) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(leaf, SparseLeaf):
        raise ValueError(f"expected a SparseLeaf, got {type(leaf).__name__}")
    a, shape, size = leaf.arrays, tuple(leaf.shape), math.prod(leaf.shape)
    if leaf.format == "dense":
        return np.asarray(a["value"]).reshape(shape), np.bool_(True)
    if leaf.format == "nm":
        moved = list(shape)
        moved.append(moved.pop(leaf.axis % len(shape)))
        groups = (*moved[:-1], moved[-1] // leaf.m, leaf.m)
        count = math.prod(groups[:-1]) * leaf.n
        pos = _unpack(a["index"], _index_bits(leaf.m), count).astype(np.intp)
        pos = pos.reshape(*groups[:-1], leaf.n)
        values = np.zeros(groups, jnp.dtype(leaf.dtype))
        mask = np.zeros(groups, bool)
        np.put_along_axis(values, pos, np.asarray(a["values"]).reshape(pos.shape), axis=-1)
        np.put_along_axis(mask, pos, True, axis=-1)
        back = lambda x: np.moveaxis(x.reshape(moved), -1, leaf.axis % len(shape))
        return back(values), back(mask)
    if leaf.format == "delta":
        gaps = np.asarray(a["gaps"]).astype(np.int64)
        gaps[gaps == 0] = np.asarray(a["long_gaps"])
        idx = np.cumsum(gaps) - 1
        flat_mask = np.zeros(size, bool)
        flat_mask[idx] = True
    elif leaf.format == "bitmap":
        flat_mask = np.unpackbits(np.asarray(a["bits"]), count=size).astype(bool)
    else:
        raise ValueError(f"unknown sparse format {leaf.format!r}")
    flat = np.zeros(size, jnp.dtype(leaf.dtype))
    flat[flat_mask] = np.asarray(a["values"])
    return flat.reshape(shape), flat_mask.reshape(shape)


def to_sparse(params: PyTree, masks: Any, *, nm_sizes: Sequence[int] = (4, 8)) -> PyTree:
    """Sparse storage of masked params: a tree like ``params`` of :class:`SparseLeaf`.

    Unpruned leaves are stored dense. A pruned leaf whose mask keeps exactly ``n`` of every ``m``
    consecutive entries along some axis (``m`` in ``nm_sizes``, checked with
    :func:`emrakul.masks.is_nm`) is stored as its kept values ``[..., groups, n]`` plus their
    positions in the group, bit-packed into uint8 (2 bits for ``m = 4``, as the 2:4 metadata of
    Mishra et al. 2021): a 2:4 float32 kernel takes 50% + 3.1% of its dense bytes. Any other mask
    is stored as the kept values plus, whichever is smaller, relative indices (uint8 gaps between
    kept positions, escapes to int32 for gaps of 256 or more; Han et al. 2016, "Deep
    Compression") or a bitmap (1 bit per weight). Gaps cost 8 bits per kept weight against 32
    for flat int32 indices and 64 for the ``[nnz, 2]`` int32 indices of a 2-D
    ``jax.experimental.sparse.BCOO``, and they compress well (orbax zstd-compresses the chunks);
    the bitmap wins above 1/8 density. Values keep their dtype, so the round trip is exact.

    Args:
      params: the dense params.
      masks: masks in any form :func:`resolve_masks` accepts.
      nm_sizes: group sizes ``m`` tried for N:M detection (``()`` disables it).

    Returns:
      A pytree with ``params``' structure whose leaves are :class:`SparseLeaf`.

    Raises:
      ValueError: bad masks (see :func:`resolve_masks`).
    """
    eff, mask_tree = resolve_masks(params, masks)
    return jax.tree.map(
        lambda p, m: _encode(np.asarray(p), np.asarray(m) if np.ndim(m) else None, nm_sizes),
        eff,
        mask_tree,
    )


def from_sparse(sparse: PyTree) -> tuple[PyTree, PyTree]:
    """The dense params (zeros where masked) and the mask tree of :func:`to_sparse`'s output.

    Returns:
      ``(params, masks)``: jnp arrays; masks are bool arrays for pruned leaves and ``True``
      markers (numpy bool scalars) for the leaves stored dense.
    """
    flat, treedef = jax.tree_util.tree_flatten(sparse, is_leaf=lambda x: isinstance(x, SparseLeaf))
    pairs = [_decode(leaf) for leaf in flat]
    params = treedef.unflatten([jnp.asarray(p) for p, _ in pairs])
    masks = treedef.unflatten([m for _, m in pairs])
    return params, masks


# --------------------------------------------------------------------------------------------
# orbax checkpoints

_FORMAT = "emrakul.export/1"


def _key_json(k: Any) -> list:
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


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp, ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save(
    path: str | os.PathLike,
    params: PyTree,
    masks: Any = None,
    *,
    nm_sizes: Sequence[int] = (4, 8),
    overwrite: bool = False,
) -> int:
    """Saves masked params sparsely (:func:`to_sparse`) as an orbax checkpoint.

    The checkpoint is a composite of ``arrays`` (orbax ``StandardSave`` of the stored arrays)
    and ``meta`` (JSON: leaf paths, formats, shapes, dtypes, N:M patterns).

    Args:
      path: the checkpoint directory (must not exist unless ``overwrite``).
      params: the dense params.
      masks: masks in any form :func:`resolve_masks` accepts; ``None`` stores everything dense.
      nm_sizes: group sizes tried for N:M detection.
      overwrite: replace an existing checkpoint at ``path``.

    Returns:
      The checkpoint's size on disk in bytes.

    Raises:
      ValueError: bad masks, or ``path`` exists and ``overwrite`` is False.
    """
    if masks is None:
        masks = jax.tree.map(lambda _: np.bool_(True), params)
    sparse = to_sparse(params, masks, nm_sizes=nm_sizes)
    flat = jax.tree_util.tree_flatten_with_path(
        sparse, is_leaf=lambda x: isinstance(x, SparseLeaf)
    )[0]
    arrays: dict[str, Any] = {"version": np.ones((1,), np.int32)}  # never an empty tree
    leaves = []
    for i, (path_keys, leaf) in enumerate(flat):
        name = f"leaf_{i:05d}"
        stored = {k: v for k, v in leaf.arrays.items() if v.size}  # orbax rejects empty arrays
        if stored:
            arrays[name] = stored
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
    meta = {"format": _FORMAT, "leaves": leaves}
    ocp, ckpt = _checkpointer()
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


def load(path: str | os.PathLike, target: PyTree | None = None) -> tuple[PyTree, PyTree]:
    """Loads a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint directory.
      target: optional tree with the params' structure (values unused); required when the
        saved tree was not made of nested dicts (e.g. lists or NamedTuples).

    Returns:
      ``(params, masks)`` as :func:`from_sparse`: the params give the masked model's outputs.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not an Emrakul export, or ``target`` does not match the saved leaves.
    """
    ocp, ckpt = _checkpointer()
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        meta = ckpt.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # orbax raises various types for a foreign layout
        raise ValueError(f"{path} is not a checkpoint written by emrakul.export.save") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by emrakul.export.save")
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
    ckpt.close()
    sparse_leaves = []
    for i, leaf in enumerate(meta["leaves"]):
        got = restored.get(f"leaf_{i:05d}", {})
        arrays = {
            k: np.asarray(got[k]) if math.prod(s) else np.zeros(tuple(s), jnp.dtype(d))
            for k, (s, d) in leaf["arrays"].items()
        }
        sparse_leaves.append(
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
    paths = [leaf["path"] for leaf in meta["leaves"]]
    if target is not None:
        flat, treedef = jax.tree_util.tree_flatten_with_path(target)
        want = [[_key_json(k) for k in p] for p, _ in flat]
        if want != paths:
            raise ValueError(f"target's leaves {len(want)} do not match the checkpoint's")
        sparse = treedef.unflatten(sparse_leaves)
    else:
        sparse: Any = {}
        for keys, leaf in zip(paths, sparse_leaves, strict=True):
            if not keys or any(kind != "key" for kind, _ in keys):
                raise ValueError(
                    "the checkpoint holds a tree that is not nested dicts; pass target= with the "
                    "params' structure"
                )
            node = sparse
            for _, k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1][1]] = leaf
    return from_sparse(sparse)
