"""Sparse encoding of masked params: kept values plus the cheapest index format per leaf.

Unstructured kernels are stored as values plus relative (delta) indices or a bitmap, N:M kernels
as compressed values plus packed in-group indices (Han et al. 2015, "Learning both weights and
connections for efficient neural networks", and Han et al. 2016, "Deep Compression", for the
relative indices; Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", for the 2:4
values + 2-bit metadata layout). Encoding is exact: values keep their dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree
from emrakul.export.resolve import resolve_masks
from emrakul.masks.nm import is_nm


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
    """Bits per in-group position for groups of ``m``: 1, 2, 4 or 8."""
    return next(b for b in (1, 2, 4, 8) if (1 << b) >= m)


def _pack(idx: np.ndarray, bits: int) -> np.ndarray:
    """Packs small non-negative integers ``bits`` at a time into uint8, lowest bits first."""
    per = 8 // bits
    flat = idx.ravel().astype(np.uint8)
    flat = np.pad(flat, (0, -flat.size % per)).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` integers of :func:`_pack`'s output."""
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


def _encode_nm(p: np.ndarray, mask: np.ndarray, n: int, m: int, axis: int) -> SparseLeaf:
    """Kept values ``[..., groups, n]`` along ``axis`` plus their packed in-group positions."""
    moved = np.moveaxis(p, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, m)
    gmask = np.moveaxis(mask, axis, -1).reshape(groups.shape)
    pos = np.argsort(~gmask, axis=-1, kind="stable")[..., :n]
    values = np.take_along_axis(groups, pos, axis=-1)
    index = _pack(pos, _index_bits(m))
    return SparseLeaf("nm", p.shape, str(p.dtype), {"values": values, "index": index}, n, m, axis)


def _encode(p: np.ndarray, mask: np.ndarray | None, nm_sizes: Sequence[int]) -> SparseLeaf:
    """One leaf in the smallest exact format: dense, N:M, delta-coded or bitmap."""
    dtype = str(p.dtype)
    if mask is None:
        return SparseLeaf("dense", p.shape, dtype, {"value": p})
    pattern = _detect_nm(mask, nm_sizes)
    if pattern is not None:
        return _encode_nm(p, mask, *pattern)
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


def _decode_nm(leaf: SparseLeaf) -> tuple[np.ndarray, np.ndarray]:
    """The dense values and mask of an ``"nm"`` leaf."""
    shape = tuple(leaf.shape)
    moved = list(shape)
    moved.append(moved.pop(leaf.axis % len(shape)))
    groups = (*moved[:-1], moved[-1] // leaf.m, leaf.m)
    count = math.prod(groups[:-1]) * leaf.n
    pos = _unpack(leaf.arrays["index"], _index_bits(leaf.m), count).astype(np.intp)
    pos = pos.reshape(*groups[:-1], leaf.n)
    values = np.zeros(groups, jnp.dtype(leaf.dtype))
    mask = np.zeros(groups, bool)
    np.put_along_axis(values, pos, np.asarray(leaf.arrays["values"]).reshape(pos.shape), axis=-1)
    np.put_along_axis(mask, pos, True, axis=-1)
    back = lambda x: np.moveaxis(x.reshape(moved), -1, leaf.axis % len(shape))
    return back(values), back(mask)


def _decode(leaf: SparseLeaf) -> tuple[np.ndarray, np.ndarray]:
    """The dense values (zeros where masked) and the mask (``True`` marker if dense)."""
    if not isinstance(leaf, SparseLeaf):
        raise ValueError(f"expected a SparseLeaf, got {type(leaf).__name__}")
    a, shape, size = leaf.arrays, tuple(leaf.shape), math.prod(leaf.shape)
    if leaf.format == "dense":
        return np.asarray(a["value"]).reshape(shape), np.bool_(True)
    if leaf.format == "nm":
        return _decode_nm(leaf)
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
      masks: masks in any form :func:`~emrakul.export.resolve_masks` accepts.
      nm_sizes: group sizes ``m`` tried for N:M detection (``()`` disables it).

    Returns:
      A pytree with ``params``' structure whose leaves are :class:`SparseLeaf`.

    Raises:
      ValueError: bad masks (see :func:`~emrakul.export.resolve_masks`).
    """
    eff, mask_tree = resolve_masks(params, masks)
    return jax.tree.map(
        lambda p, m: _encode(np.asarray(p), np.asarray(m) if np.ndim(m) else None, nm_sizes),
        eff,
        mask_tree,
    )


def from_sparse(sparse: PyTree) -> tuple[PyTree, PyTree]:
    """The dense params (zeros where masked) and the mask tree of :func:`to_sparse`'s output.

    Args:
      sparse: a pytree whose leaves are :class:`SparseLeaf`.

    Returns:
      ``(params, masks)``: jnp arrays; masks are bool arrays for pruned leaves and ``True``
      markers (numpy bool scalars) for the leaves stored dense.

    Raises:
      ValueError: a leaf that is not a :class:`SparseLeaf`, or an unknown format.
    """
    flat, treedef = jax.tree_util.tree_flatten(sparse, is_leaf=lambda x: isinstance(x, SparseLeaf))
    pairs = [_decode(leaf) for leaf in flat]
    params = treedef.unflatten([jnp.asarray(p) for p, _ in pairs])
    masks = treedef.unflatten([m for _, m in pairs])
    return params, masks
