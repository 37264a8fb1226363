"""Would a hand-written CPU kernel make exact selection fast enough? A measured prototype.

``benchmarks/topk_ffi.cc`` is an exact top-k mask by radix select (a histogram of the top 11
bits of the floats' ordered integer keys, a gather of the one bucket holding the k-th largest,
``std::nth_element`` on it, a pass that writes the mask with ties broken by index), registered
as an XLA FFI custom call. This script compiles it with the system's C++ compiler, checks that
it gives exactly :func:`emrakul.masks.topk_mask`'s masks on random inputs (ties, -inf, NaN,
-0.0, k = 0 and k = n), then times both, interleaved, at the sizes of the foundation issue's
MLP kernels, on the two selections of a RigL update (keep the largest |w| among the active
entries, the rest -inf; regrow the largest |g| among the others). It is a benchmark, not
library code: nothing in ``emrakul`` uses it.

Run: ``python -m benchmarks.topk_ffi [--rounds 100] [--cxx g++]``
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._ffi import build_and_register
from benchmarks._timing import interleaved_medians, markdown_table
from emrakul.masks import topk as tk
from emrakul.masks import topk_mask

TARGET = "emrakul_topk_mask_prototype"


def ffi_rows(x: jax.Array, k: jax.Array) -> jax.Array:
    """The custom call on sanitised float32 rows ``x`` ([rows, n]) with counts ``k`` ([rows])."""
    call = jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(x.shape, jnp.bool_), vmap_method="expand_dims"
    )
    return call(x, k)


def ffi_topk_mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
    """The prototype behind ``topk_mask``'s contract for ``axis=None`` (float32, CPU only; the
    target must be registered first). ``k`` is validated as ``topk_mask`` does."""
    x = tk._as_float(scores).astype(jnp.float32).reshape(1, -1)  # NaN / -0.0 / denormals
    k = tk._check_k(k, x.shape[1])
    if x.shape[1] == 0:
        return jnp.zeros(jnp.shape(scores), bool)
    return ffi_rows(x, k.reshape(1)).reshape(jnp.shape(scores))


def check(trials: int = 400) -> int:
    """Number of random inputs on which the prototype's mask differs from ``topk_mask``."""
    rng = np.random.default_rng(0)
    ours, proto = jax.jit(topk_mask), jax.jit(ffi_topk_mask)
    bad = 0
    for t in range(trials):
        n = int(rng.choice([7, 64, 513, 2048, 5120]))  # few shapes: few compilations
        x = rng.standard_normal(n).astype(np.float32)
        if t % 4 == 1:
            x = np.round(x * 3) / 3  # many ties
        elif t % 4 == 2:
            x[rng.random(n) < 0.5] = -np.inf  # masked-out entries, as in RigL
        elif t % 4 == 3:
            x[rng.random(n) < 0.2] = np.nan
            x[rng.random(n) < 0.2] = -0.0
        k = int(rng.integers(1, n)) if t % 10 else int(rng.choice([0, n]))
        bad += not np.array_equal(np.asarray(ours(x, k)), np.asarray(proto(x, k)))
    # several rows with their own counts, through the custom call's row loop
    x = rng.standard_normal((6, 700)).astype(np.float32)
    x[2] = np.round(x[2])  # ties
    k = np.array([0, 1, 350, 699, 700, 17], np.int32)
    want = topk_mask(jnp.asarray(x), jnp.asarray(k), axis=1)
    got = jax.jit(ffi_rows)(tk._as_float(jnp.asarray(x)), jnp.asarray(k))
    bad += not np.array_equal(np.asarray(want), np.asarray(got))
    return bad


def rigl_like(n: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, int]]:
    """The two selections of a RigL update at 90% sparsity, drop fraction 0.3: keep the 70%
    largest |w| among the 10% active entries (the rest -inf), and regrow that many |g|."""
    active = rng.random(n) < 0.1
    w = np.where(active, np.abs(rng.standard_normal(n)), -np.inf).astype(np.float32)
    g = np.where(active, -np.inf, np.abs(rng.standard_normal(n))).astype(np.float32)
    n_active = int(active.sum())
    n_drop = round(0.3 * n_active)
    return [("keep |w|", w, n_active - n_drop), ("grow |g|", g, n_drop)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--cxx", default="g++")
    args = parser.parse_args()
    build_and_register("topk_ffi.cc", "EmrakulTopkMask", TARGET, args.cxx)
    bad = check()
    print(f"masks that differ from topk_mask: {bad} of 401 checks (400 random inputs, 1 multi-row)")
    rng = np.random.default_rng(1)
    rows = []
    ours, proto = jax.jit(topk_mask), jax.jit(ffi_topk_mask)
    for n in (5120, 262144, 401408):  # the kernels of the 784-512-512-10 MLP
        for what, scores, k in rigl_like(n, rng):
            x = jnp.asarray(scores)
            bad += not np.array_equal(np.asarray(ours(x, k)), np.asarray(proto(x, k)))
            med = interleaved_medians(
                {
                    "xla": lambda x=x, k=k, f=ours: f(x, k),
                    "ffi": lambda x=x, k=k, f=proto: f(x, k),
                },
                rounds=args.rounds,
            )
            xla, ffi = med["xla"] * 1e3, med["ffi"] * 1e3
            rows.append([n, what, k, f"{xla:.3f}", f"{ffi:.3f}", f"{xla / ffi:.2f}x"])
    print(f"\nmedians of {args.rounds} interleaved rounds; the timed masks were checked too")
    header = ["n", "selection", "k", "topk_mask ms", "C++ radix select ms", "speed-up"]
    print(markdown_table(header, rows))
    print(f"masks that differ from topk_mask, all checks: {bad}")
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
