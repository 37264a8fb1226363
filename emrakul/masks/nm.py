"""N:M semi-structured masks: keep the ``n`` largest of every ``m`` consecutive entries.

N:M sparsity (2:4 on NVIDIA Ampere sparse tensor cores) is from Mishra et al. 2021,
"Accelerating Sparse Deep Neural Networks", and Zhou et al. 2021, "Learning N:M Fine-grained
Structured Sparse Neural Networks From Scratch". Within a group the rank of each entry is
computed by ``m * m`` pairwise comparisons (no sort), with ties broken by position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.masks.topk import _as_float


def _groups(x: jax.Array, m: int, axis: int, name: str) -> tuple[jax.Array, int]:
    if not isinstance(m, int | np.integer) or m < 1:
        raise ValueError(f"m must be a positive Python int (a static group size), got {m!r}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension")
    axis = axis % x.ndim
    length = x.shape[axis]
    if length % m:
        raise ValueError(
            f"N:M groups of m={m} along axis {axis} need a length divisible by {m}; "
            f"{name} has shape {x.shape} (length {length})"
        )
    moved = jnp.moveaxis(x, axis, -1)
    return moved.reshape(*moved.shape[:-1], length // m, m), axis


def _check_n(n, m: int) -> jax.Array:
    if isinstance(n, float) or (hasattr(n, "dtype") and not jnp.issubdtype(n.dtype, jnp.integer)):
        raise TypeError(f"n must be an integer, got {n!r}")
    if not isinstance(n, jax.core.Tracer):
        nv = int(np.asarray(n))
        if nv > m:
            raise ValueError(f"N:M needs n <= m, got n={nv} > m={m}")
        if nv < 0:
            raise ValueError(f"N:M needs n >= 0, got n={nv}")
    return jnp.clip(jnp.asarray(n, jnp.int32), 0, m)


def nm_mask(scores: jax.Array, n, m: int, axis: int = -1) -> jax.Array:
    """Boolean N:M mask: in every group of ``m`` consecutive entries along ``axis``, the ``n``
    largest scores are kept (ties: the lower index wins).

    Args:
      scores: floating array; its length along ``axis`` must be a multiple of ``m``.
      n: entries kept per group, ``0 <= n <= m``; may be traced (changing it does not
        recompile; a traced value is clipped into range).
      m: the group size, a static Python int.
      axis: the axis along which groups are formed.

    Returns:
      A bool array of ``scores.shape``.

    Raises:
      ValueError: the axis length is not a multiple of ``m``, or a concrete ``n > m``/``n < 0``.
      TypeError: non-floating scores or a non-integer ``n``.
    """
    x = _as_float(scores)
    g, axis = _groups(x, m, axis, "scores")
    n = _check_n(n, m)
    a = g[..., :, None]  # entry i
    b = g[..., None, :]  # entry j
    j_before_i = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]
    beats = (b > a) | ((b == a) & j_before_i)  # j outranks i
    rank = jnp.sum(beats, axis=-1, dtype=jnp.int32)
    keep = rank < n
    moved_shape = (*g.shape[:-2], g.shape[-2] * m)
    return jnp.moveaxis(keep.reshape(moved_shape), -1, axis)


def is_nm(mask: jax.Array, n, m: int, axis: int = -1, exact: bool = False) -> jax.Array:
    """Whether ``mask`` is N:M along ``axis``: at most ``n`` non-zeros in every group of ``m``.

    Args:
      mask: any array (non-zero means kept).
      n: the allowed number of non-zeros per group (may be traced).
      m: the group size (static).
      axis: the grouping axis.
      exact: require exactly ``n`` non-zeros in every group (what :func:`nm_mask` produces).

    Returns:
      A scalar bool array.
    """
    g, _ = _groups(jnp.asarray(mask) != 0, m, axis, "mask")
    n = _check_n(n, m)
    count = jnp.sum(g, axis=-1, dtype=jnp.int32)
    return jnp.all(count == n) if exact else jnp.all(count <= n)
