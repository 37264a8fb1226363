"""The XLA kernel of :func:`emrakul.masks.topk_mask`: exact top-k of every row, without sorting.

The k-th largest value of a row is found by a safeguarded interpolation search over the values
(a selection algorithm in the spirit of Floyd & Rivest 1975, "Expected time bounds for
selection"): an Illinois-style regula falsi on the count ``#(x >= t)`` (Dowell & Jarratt 1971),
with a bisection step on the float's ordered integer bits whenever interpolation stops halving
the bracket, so the worst case is bounded by about twice the number of bits. Each step is one
fused pass over the row. Ties at the threshold are resolved by position with a blocked prefix
count, which only runs when ties exist.

Rows must be sanitised first (``emrakul.masks.topk._as_float``: NaN as ``-inf``, ``-0.0`` and
denormals as ``0.0``) and ``k`` clipped into ``[0, n]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_MAX_ITERS = 512


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


def select_rows(x: jax.Array, k: jax.Array) -> jax.Array:
    """Top-k mask of every row of ``x`` ([rows, n], sanitised floats) with per-row ``k``
    ([rows], int32 in [0, n]); ties broken by position (the lower index wins)."""
    rows, n = x.shape
    dtype = x.dtype

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

    thr, exact = jax.lax.while_loop(cond, functools.partial(_search_step, x, k), state)[5:8:2]
    thr = thr[:, None]

    with_ties = functools.partial(_with_ties, x, thr, k)
    mask = jax.lax.cond(jnp.all(exact), lambda _: x >= thr, with_ties, None)
    return mask & (k > 0)[:, None]


def _search_step(x: jax.Array, k: jax.Array, s: tuple) -> tuple:
    """One probe of the bracket search of :func:`select_rows` (the ``while_loop`` body)."""
    dtype = x.dtype
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

    n_lo, n_hi = jax.lax.cond(
        jnp.any(stall), functools.partial(_snap, x, k, n_c_hi), lambda b: b, (n_lo, n_hi)
    )
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


def _snap(x: jax.Array, k: jax.Array, n_c_hi: jax.Array, bounds: tuple) -> tuple:
    """Moves both bounds onto data values: ``a`` up to the smallest entry ``>= a`` and ``b``
    down to the largest entry ``<= b`` (``a = b`` when one entry is missing above ``hi``)."""
    inf = jnp.asarray(jnp.inf, x.dtype)
    a, b = bounds
    a = jnp.min(jnp.where(x >= a[:, None], x, inf), axis=1)
    b = jnp.max(jnp.where(x <= b[:, None], x, -inf), axis=1)
    return jnp.where(k - n_c_hi == 1, b, a), b


def _with_ties(x: jax.Array, thr: jax.Array, k: jax.Array, _) -> jax.Array:
    """The mask at threshold ``thr`` ([rows, 1]) keeping only the first tied entries."""
    n = x.shape[1]
    gt = x > thr
    eq = (x >= thr) & ~gt
    need = k - jnp.sum(gt, axis=1, dtype=jnp.int32)  # tied entries to keep
    cut = _tie_cut(eq, need)
    return gt | (eq & (jnp.arange(n, dtype=jnp.int32)[None, :] < cut[:, None]))


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
