"""Exact k-of-n selection without sorting.

``topk_mask(scores, k)`` keeps exactly ``k`` entries, the ``k`` largest scores, with ties broken
deterministically by position (the lower flat index wins). It never sorts the array. The k-th
largest value is found by a safeguarded interpolation search over the values (a selection
algorithm in the spirit of Floyd & Rivest 1975, "Expected time bounds for selection"), where
each step is one fused pass over the array that returns

* how many entries are >= the probe ``t``,
* the smallest entry >= ``t`` and the largest entry < ``t``,

so that the bracket ``[lo, hi]`` around the k-th value always ends on actual data values. On
smooth score distributions a handful of passes suffices; a bisection step on the float's
ordered integer bits (radix/bisection select) is taken whenever interpolation stops halving the
bracket, so that the worst case is bounded by about twice the number of bits. Ties at the
threshold are resolved by a blocked prefix count over the flat index, which only runs when ties
exist. The search itself lives in :mod:`emrakul.masks.threshold_search`.

``k`` is a traced value: changing it does not recompile. NaN scores rank below every number
(they are kept last), and ``-0.0`` equals ``+0.0``.

On the CPU an optional native kernel gives the same masks faster; it is opt-in, see
:mod:`emrakul.masks.native`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.masks import native
from emrakul.masks.threshold_search import select_rows as _select_rows


def _as_float(scores: jax.Array) -> jax.Array:
    """``scores`` as float32 (float64 stays), NaN as ``-inf``, ``-0.0`` and denormals as 0.

    Raises:
      TypeError: non-floating scores.
    """
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(f"scores must have a floating dtype, got {scores.dtype}")
    if scores.dtype != jnp.float64:
        scores = scores.astype(jnp.float32)
    # NaN ranks lowest; -0.0, +0.0 and denormals are one value (XLA:CPU flushes denormals).
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    tiny = jnp.finfo(scores.dtype).tiny
    return jnp.where(jnp.abs(scores) < tiny, jnp.zeros((), scores.dtype), scores)


def _check_k(k, n: int, name: str = "k") -> jax.Array:
    """Validates a concrete ``k`` (a clear error) and clips a traced one into [0, n]."""
    if isinstance(k, float) or (hasattr(k, "dtype") and not jnp.issubdtype(k.dtype, jnp.integer)):
        raise TypeError(f"{name} must be an integer (a count), got {k!r}")
    if not isinstance(k, jax.core.Tracer):
        kv = np.asarray(k)
        if kv.size and (kv.min() < 0 or kv.max() > n):
            raise ValueError(f"{name} must lie in [0, {n}] (the number of candidates), got {k}")
    return jnp.clip(jnp.asarray(k, jnp.int32), 0, n)


def _rows(x: jax.Array, k: jax.Array, impl: str | None) -> jax.Array:
    """``_select_rows``, or the native CPU kernel (:mod:`emrakul.masks.native`) for float32
    rows in programs compiled for the CPU; other platforms always get ``_select_rows``."""
    if impl == "native" and not native.available():  # builds it if needed
        raise RuntimeError(f"impl='native': the native top-k kernel is {native.status()}")
    use_native = native.enabled() if impl is None else impl == "native"
    if use_native and x.dtype == jnp.float32:
        # A bool mask has no gradient; the custom call has no JVP rule, so keep tangents out.
        x = jax.lax.stop_gradient(x)
        return jax.lax.platform_dependent(x, k, cpu=native.topk_rows, default=_select_rows)
    return _select_rows(x, k)


def topk_mask(
    scores: jax.Array, k, axis: int | None = None, *, impl: str | None = None
) -> jax.Array:
    """Boolean mask of the ``k`` largest ``scores``, exactly ``k`` ones, without sorting.

    Args:
      scores: floating array of any shape.
      k: number of entries to keep (an integer, may be traced). With ``axis=None`` it counts over
        the whole array; with ``axis`` it is the count per slice along ``axis`` and may be a
        scalar or an array of shape ``scores.shape`` without ``axis`` (one budget per row,
        e.g. per unit or channel).
      axis: ``None`` selects over the flattened array; an int selects independently within
        every 1-D slice along that axis.
      impl: ``None`` (the default) follows :func:`emrakul.masks.native.enable`; ``"xla"``
        always uses the XLA implementation; ``"native"`` uses the native CPU kernel (building
        it if needed) in programs compiled for the CPU, for float32 scores and for bfloat16 /
        float16 ones (selected as float32, like the XLA version does); float64 scores stay on
        XLA. All give the same mask.

    Returns:
      A bool array of ``scores.shape``. Ties are broken by position: among equal scores the one
      with the lower index (along ``axis``, or in row-major order) is kept.

    Raises:
      TypeError: non-floating scores or a non-integer ``k``.
      ValueError: a concrete ``k`` outside ``[0, n]`` (a traced ``k`` is clipped into range),
        or an unknown ``impl``.
      RuntimeError: ``impl="native"`` where the native kernel cannot be built.
    """
    if impl not in (None, "xla", "native"):
        raise ValueError(f"impl must be None, 'xla' or 'native', got {impl!r}")
    x = _as_float(scores)
    if axis is None:
        n = x.size
        k = _check_k(k, n)
        if n == 0:
            return jnp.zeros(x.shape, bool)
        if jnp.ndim(k) != 0:
            raise ValueError(f"with axis=None, k must be a scalar, got shape {jnp.shape(k)}")
        return _rows(x.reshape(1, n), k.reshape(1), impl).reshape(x.shape)
    if x.ndim == 0:
        raise ValueError("axis was given but scores is a scalar")
    axis = axis % x.ndim
    moved = jnp.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    k = _check_k(k, n)
    batch = moved.shape[:-1]
    try:
        k = jnp.broadcast_to(k, batch)
    except ValueError as e:
        raise ValueError(
            f"k of shape {jnp.shape(k)} does not broadcast to the rows {batch} of axis {axis}"
        ) from e
    rows = int(np.prod(batch))
    if rows == 0 or n == 0:
        return jnp.zeros(x.shape, bool)
    mask = _rows(moved.reshape(rows, n), k.reshape(rows), impl)
    return jnp.moveaxis(mask.reshape(moved.shape), -1, axis)
