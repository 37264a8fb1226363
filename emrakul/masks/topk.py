"""Exact k-of-n selection without sorting.

``topk_mask(scores, k)`` keeps exactly ``k`` entries, the ``k`` largest scores, with ties broken
deterministically by position (the lower flat index wins). It never sorts the array. The k-th
largest value is found by a safeguarded interpolation search over the values (a selection
algorithm in the spirit of Floyd & Rivest 1975, "Expected time bounds for selection"), where
each step is one fused pass over the array that returns

* how many entries are >= the probe ``t``,
* the smallest entry >= ``t`` and the largest entry < ``t``,

so that the bracket ``[lo, hi]`` around the k-th value always ends on actual data values. On
smooth score distributions a handful of passes (typically 4-8) suffices; a bisection step on
the float's ordered integer bits (radix/bisection select) is taken whenever interpolation stops
halving the bracket, so that the worst case is bounded by about twice the number of bits. Ties
at the threshold are resolved by a bisection over the flat index, which only runs when ties
exist.

``k`` is a traced value: changing it does not recompile. NaN scores rank below every number
(they are kept last), and ``-0.0`` equals ``+0.0``.

On the CPU an optional native kernel gives the same masks several times faster; it is opt-in,
see :mod:`emrakul.masks.native`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.masks import native

_MAX_ITERS = 512


def _as_float(scores: jax.Array) -> jax.Array:
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(f"scores must have a floating dtype, got {scores.dtype}")
    if scores.dtype != jnp.float64:
        scores = scores.astype(jnp.float32)
    # NaN ranks lowest; -0.0, +0.0 and denormals are one value (XLA:CPU flushes denormals).
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    tiny = jnp.finfo(scores.dtype).tiny
    return jnp.where(jnp.abs(scores) < tiny, jnp.zeros((), scores.dtype), scores)


def _uint_for(dtype: np.dtype) -> np.dtype:
    return jnp.uint64 if dtype == jnp.float64 else jnp.uint32


def _to_key(x: jax.Array) -> jax.Array:
    """Order-preserving map from floats to unsigned integers."""
    udt = _uint_for(x.dtype)
    bits = jax.lax.bitcast_convert_type(x, udt)
    nbits = np.dtype(udt).itemsize * 8
    sign = jnp.asarray(1, udt) << (nbits - 1)
    return jnp.where(bits & sign, ~bits, bits | sign)


def _from_key(key: jax.Array, dtype: np.dtype) -> jax.Array:
    udt = key.dtype
    nbits = np.dtype(udt).itemsize * 8
    sign = jnp.asarray(1, udt) << (nbits - 1)
    bits = jnp.where(key & sign, key & ~sign, ~key)
    return jax.lax.bitcast_convert_type(bits, dtype)


def _prev(t: jax.Array) -> jax.Array:
    """The largest value strictly below ``t`` that compiled code can tell apart from ``t``.

    XLA:CPU flushes denormals to zero, so the denormal range (and -0.0) is skipped.
    """
    tiny = jnp.finfo(t.dtype).tiny
    raw = _from_key(_to_key(t) - 1, t.dtype)
    return jnp.where(jnp.abs(raw) < tiny, jnp.where(t > 0, 0.0, -tiny).astype(t.dtype), raw)


def _next(t: jax.Array) -> jax.Array:
    """The smallest value strictly above ``t`` (see :func:`_prev`)."""
    tiny = jnp.finfo(t.dtype).tiny
    raw = _from_key(_to_key(t) + 1, t.dtype)
    return jnp.where(jnp.abs(raw) < tiny, jnp.where(t < 0, 0.0, tiny).astype(t.dtype), raw)


def _check_k(k, n: int, name: str = "k") -> jax.Array:
    """Validates a concrete ``k`` (a clear error) and clips a traced one into [0, n]."""
    if isinstance(k, float) or (hasattr(k, "dtype") and not jnp.issubdtype(k.dtype, jnp.integer)):
        raise TypeError(f"{name} must be an integer (a count), got {k!r}")
    if not isinstance(k, jax.core.Tracer):
        kv = np.asarray(k)
        if kv.size and (kv.min() < 0 or kv.max() > n):
            raise ValueError(f"{name} must lie in [0, {n}] (the number of candidates), got {k}")
    return jnp.clip(jnp.asarray(k, jnp.int32), 0, n)


def _count_ge(x: jax.Array, t: jax.Array, negate: bool = False) -> jax.Array:
    """Per row, #(x >= t), or #(-x >= t) with ``negate`` (exact float sums below 2**24)."""
    ge = (-x >= t[:, None]) if negate else (x >= t[:, None])
    if x.shape[1] < 2**24:
        return jnp.sum(jnp.where(ge, 1.0, 0.0), axis=1).astype(jnp.int32)
    return jnp.sum(ge, axis=1, dtype=jnp.int32)


_SAMPLE = 512


def _sample_bracket(x: jax.Array, k: jax.Array):
    """Initial bracket [lo, hi] of the k-th largest value, from a strided sample of each row.

    A sample of at most ``_SAMPLE`` entries (at most 1/8 of the row; the full row is never
    sorted) is sorted, and the sample quantiles about 2.5 standard deviations either side of
    the target rank are checked against the whole row in one fused pass. Whatever the sample
    says, the returned bracket is valid; a poor sample only costs extra passes later.
    """
    rows, n = x.shape
    dtype = x.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    lo = jnp.full((rows,), -inf)
    hi = jnp.full((rows,), inf)
    c_lo = jnp.full((rows,), n, jnp.int32)
    c_hi = jnp.zeros((rows,), jnp.int32)
    size = min(_SAMPLE, n // 8)
    if size < 16:
        return lo, hi, c_lo, c_hi
    stride = n // size
    sample = -jnp.sort(-x[:, : stride * size : stride], axis=1)  # descending
    p = k.astype(jnp.float32) / n
    r = p * size
    d = 2.5 * jnp.sqrt(size * p * (1.0 - p)) + 1.0
    ia = jnp.clip(jnp.ceil(r + d).astype(jnp.int32) - 1, 0, size - 1)
    ib = jnp.clip(jnp.floor(r - d).astype(jnp.int32) - 1, 0, size - 1)
    a = jnp.take_along_axis(sample, ia[:, None], axis=1)[:, 0]  # lower candidate
    b = jnp.take_along_axis(sample, ib[:, None], axis=1)[:, 0]  # upper candidate
    c_a = _count_ge(x, a)
    c_b = n - _count_ge(x, -b, negate=True)  # #(x > b)
    a_low = c_a >= k  # T >= a
    b_high = c_b < k  # T <= b
    lo = jnp.where(a_low, a, jnp.where(b_high, lo, _next(b)))
    c_lo = jnp.where(a_low, c_a, jnp.where(b_high, c_lo, c_b))
    hi = jnp.where(b_high, b, jnp.where(a_low, hi, _prev(a)))
    c_hi = jnp.where(b_high, c_b, jnp.where(a_low, c_hi, c_a))
    return lo, hi, c_lo, c_hi


def _select_rows(x: jax.Array, k: jax.Array) -> jax.Array:
    """Top-k mask of every row of ``x`` ([rows, n]) with per-row ``k`` ([rows])."""
    rows, n = x.shape
    dtype = x.dtype
    inf = jnp.asarray(jnp.inf, dtype)

    # Invariant: the k-th largest value T lies in [lo, hi]; c_lo = #(x >= lo) >= k and
    # c_hi = #(x > hi) < k. Seed the bracket from a strided sample (see _sample_bracket).
    lo, hi, c_lo, c_hi = _sample_bracket(x, k)
    exact = k == n  # exactly k entries are >= thr: no tie-break needed
    done = exact | (lo == hi) | (k == 0)
    ones = jnp.ones((rows,), dtype)
    zeros = jnp.zeros((rows,), jnp.int32)
    state = (0, lo, hi, c_lo, c_hi, lo, done, exact, ones, ones, zeros, zeros)

    def cond(s):
        return (s[0] < _MAX_ITERS) & ~jnp.all(s[6])

    def body(s):
        i, lo, hi, c_lo, c_hi, thr, done, exact, s_lo, s_hi, side, slow = s
        # Illinois-style regula falsi on the count: f(t) = #(x >= t) - k - 1/2 is decreasing;
        # an endpoint kept twice in a row has its weight halved (Dowell & Jarratt 1971).
        f_lo = (c_lo - k).astype(dtype) - 0.5
        f_hi = (k - c_hi).astype(dtype) + 0.5
        frac = s_lo * f_lo / (s_lo * f_lo + s_hi * f_hi)
        t_interp = lo + frac * (hi - lo)
        # Safeguard: bisection on the ordered-integer keys halves the key range.
        klo, khi = _to_key(lo), _to_key(hi)
        t_bisect = _from_key(klo + (khi - klo + 1) // 2, dtype)
        t_bisect = jnp.maximum(t_bisect, _next(lo))  # a denormal midpoint would equal lo
        bad = ~jnp.isfinite(t_interp) | (t_interp <= lo) | (t_interp > hi)
        forced = slow >= 3  # three steps without halving the bracket's mass
        t = jnp.where(bad | forced, t_bisect, t_interp)
        cnt = _count_ge(x, t)
        up = cnt >= k
        hit = cnt == k
        n_lo = jnp.where(up, t, lo)
        n_hi = jnp.where(up, hi, _prev(t))
        n_c_lo = jnp.where(up, cnt, c_lo)
        n_c_hi = jnp.where(up, c_hi, cnt)
        # Snap both bounds onto data values when a probe fell into an empty gap (a bound moved
        # but its count did not), or when T is the largest value <= hi (one entry missing).
        stall = jnp.where(up, cnt == c_lo, cnt == c_hi) | (k - n_c_hi == 1)
        stall = stall & ~done & ~hit

        def snap(bounds):
            a, b = bounds
            a = jnp.min(jnp.where(x >= a[:, None], x, inf), axis=1)
            b = jnp.max(jnp.where(x <= b[:, None], x, -inf), axis=1)
            return jnp.where(k - n_c_hi == 1, b, a), b

        n_lo, n_hi = jax.lax.cond(jnp.any(stall), snap, lambda b: b, (n_lo, n_hi))
        n_done = done | hit | (n_lo >= n_hi)
        n_side = jnp.where(up, 1, -1)
        again = n_side == side
        n_s_lo = jnp.where(up, 1.0, jnp.where(again, 0.5 * s_lo, s_lo))
        n_s_hi = jnp.where(up, jnp.where(again, 0.5 * s_hi, s_hi), 1.0)
        halved = 2 * (n_c_lo - n_c_hi) <= (c_lo - c_hi)
        keep = lambda old, new: jnp.where(done, old, new)
        return (
            i + 1,
            keep(lo, n_lo),
            keep(hi, n_hi),
            keep(c_lo, n_c_lo),
            keep(c_hi, n_c_hi),
            keep(thr, jnp.where(hit, t, n_lo)),
            n_done,
            keep(exact, hit),
            n_s_lo,
            n_s_hi,
            n_side,
            jnp.where(halved | forced, 0, slow + 1),
        )

    thr, exact = jax.lax.while_loop(cond, body, state)[5:8:2]
    thr = thr[:, None]

    def with_ties(_):
        gt = x > thr
        eq = (x >= thr) & ~gt
        need = k - jnp.sum(gt, axis=1, dtype=jnp.int32)  # tied entries to keep
        cut = _tie_cut(eq, need)
        return gt | (eq & (jnp.arange(n, dtype=jnp.int32)[None, :] < cut[:, None]))

    mask = jax.lax.cond(jnp.all(exact), lambda _: x >= thr, with_ties, None)
    return mask & (k > 0)[:, None]


def _tie_cut(eq: jax.Array, need: jax.Array) -> jax.Array:
    """Per row, the index bound I such that ``eq[:I]`` holds exactly ``need`` True entries.

    Blocked prefix count: one pass of per-block counts, a prefix sum over blocks, and a prefix
    sum inside the one block holding the ``need``-th entry (a full-length cumsum is slow on
    XLA:CPU).
    """
    rows, n = eq.shape
    block = min(512, n)
    nb = -(-n // block)
    e = jnp.pad(eq, ((0, 0), (0, nb * block - n))).reshape(rows, nb, block)
    cum = jnp.cumsum(jnp.sum(e, axis=2, dtype=jnp.int32), axis=1)  # [rows, nb]
    blk = jnp.minimum(jnp.sum(cum < need[:, None], axis=1, dtype=jnp.int32), nb - 1)
    before = jnp.where(
        blk > 0, jnp.take_along_axis(cum, jnp.maximum(blk - 1, 0)[:, None], 1)[:, 0], 0
    )
    inner = jnp.take_along_axis(e, blk[:, None, None], axis=1)[:, 0, :]  # [rows, block]
    icum = jnp.cumsum(inner, axis=1, dtype=jnp.int32)
    pos = jnp.sum(icum < (need - before)[:, None], axis=1, dtype=jnp.int32)
    return jnp.where(need > 0, blk * block + pos + 1, 0)


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
