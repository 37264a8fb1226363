"""Hand-written CPU kernels for exact selection, against ``topk_mask``'s XLA implementation.

Two exact top-k masks as XLA FFI custom calls:

* ``radix`` (``benchmarks/topk_ffi.cc``, a prototype of session 13, not library code): a
  histogram of the top 11 bits of the floats' ordered integer keys, a gather of the one bucket
  holding the k-th largest, ``std::nth_element`` on it, a pass that writes the mask with ties
  broken by index (its histogram and gather are scalar loops);
* ``native`` (``emrakul/masks/_native/topk.cc``, the library's optional kernel,
  :mod:`emrakul.masks.native`): two-threshold count passes vectorised by the compiler narrow a
  bracket around the k-th value, an AVX-512 compaction gathers the entries inside it,
  ``std::nth_element`` picks the threshold.

This script builds both with the system's C++ compiler (``-O3 -march=native``), checks that both
give exactly the XLA implementation's masks on random inputs (ties, -inf, NaN, -0.0, infinities,
denormals, k = 0 and k = n, several rows), then times all three, interleaved, at the sizes of
the foundation issue's MLP kernels on the two selections of a RigL update (keep the largest |w|
among the active entries, the rest -inf; regrow the largest |g| among the others). With
``--step`` it also times the RigL train step of :mod:`benchmarks.step_overhead` with each
selection against the dense step, as ratios measured in one run (the issue's target: 1.5x).

Run: ``python -m benchmarks.topk_ffi [--rounds 100] [--step]``
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._ffi import build_and_register
from benchmarks._timing import interleaved_medians, markdown_table, step_ratios
from emrakul.masks import native, topk_mask
from emrakul.masks import topk as tk

TARGET = "emrakul_topk_mask_prototype"
ALGORITHMS = ("radix", "native")


def ffi_rows(x: jax.Array, k: jax.Array) -> jax.Array:
    """The radix custom call on sanitised float32 rows ``x`` ([rows, n]), counts ``k`` ([rows])."""
    call = jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(x.shape, jnp.bool_), vmap_method="expand_dims"
    )
    return call(x, k)


def ffi_topk_mask(scores: jax.Array, k: int | jax.Array, algorithm: str = "radix") -> jax.Array:
    """``topk_mask``'s contract for ``axis=None`` through a custom call (float32, CPU only; the
    radix target must be registered first). ``k`` is validated as ``topk_mask`` does."""
    if algorithm == "native":
        return topk_mask(scores, k, impl="native")
    x = tk._as_float(scores).astype(jnp.float32).reshape(1, -1)  # NaN / -0.0 / denormals
    k = tk._check_k(k, x.shape[1])
    if x.shape[1] == 0:
        return jnp.zeros(jnp.shape(scores), bool)
    return ffi_rows(x, k.reshape(1)).reshape(jnp.shape(scores))


def check(algorithm: str, trials: int = 400) -> int:
    """Number of random inputs on which a prototype's mask differs from ``topk_mask``."""
    rng = np.random.default_rng(0)
    ours = jax.jit(functools.partial(topk_mask, impl="xla"))
    proto = jax.jit(functools.partial(ffi_topk_mask, algorithm=algorithm))
    bad = 0
    for t in range(trials):
        n = int(rng.choice([7, 64, 513, 2048, 5120]))  # few shapes: few compilations
        x = rng.standard_normal(n).astype(np.float32)
        if t % 5 == 1:
            x = np.round(x * 3) / 3  # many ties
        elif t % 5 == 2:
            x[rng.random(n) < 0.5] = -np.inf  # masked-out entries, as in RigL
        elif t % 5 == 3:
            x[rng.random(n) < 0.2] = np.nan
            x[rng.random(n) < 0.2] = -0.0
        elif t % 5 == 4:
            x[rng.random(n) < 0.3] = np.inf  # infinite ends of the bracket
            x[rng.random(n) < 0.3] = -np.inf
            x *= np.float32(10.0) ** rng.integers(-44, 30, n)  # wide range, some denormals
        k = int(rng.integers(1, n)) if t % 10 else int(rng.choice([0, n]))
        bad += not np.array_equal(np.asarray(ours(x, k)), np.asarray(proto(x, k)))
    # several rows with their own counts, through the custom call's row loop
    x = rng.standard_normal((6, 700)).astype(np.float32)
    x[2] = np.round(x[2])  # ties
    k = np.array([0, 1, 350, 699, 700, 17], np.int32)
    want = topk_mask(jnp.asarray(x), jnp.asarray(k), axis=1, impl="xla")
    if algorithm == "native":
        got = topk_mask(jnp.asarray(x), jnp.asarray(k), axis=1, impl="native")
    else:
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


def time_step(rounds: int, repeats: int) -> tuple[list[list[object]], bool]:
    """The RigL step of ``benchmarks.step_overhead`` with each selection, as ratios to dense;
    also whether the three RigL runs ended with identical masks."""
    from benchmarks import step_overhead

    copy = lambda t: jax.tree.map(jnp.copy, t)
    selects = {
        "topk_mask": functools.partial(topk_mask, impl="xla"),
        "C++ radix": functools.partial(ffi_topk_mask, algorithm="radix"),
        "native": functools.partial(ffi_topk_mask, algorithm="native"),
    }
    runs, finals = {}, {}
    for name, select in selects.items():
        params, opt, vit, masks, steps = step_overhead.build(256, select)
        if not runs:
            runs["dense"] = (steps["dense"], [copy(params), copy(opt)], 2)
            runs["vitals+masks"] = (steps["vitals+masks"], [copy(params), copy(opt), vit, masks], 3)
        finals[name] = [copy(params), copy(opt), copy(vit), copy(masks)]
        runs[f"+ rigl masks ({name})"] = (steps["+ rigl masks"], finals[name], 4)
    med = step_ratios(runs, rounds=rounds, repeats=repeats)
    # The three RigL runs took the same steps from the same start: their masks must agree.
    same = all(step_overhead.same_masks(m[3], finals["topk_mask"][3]) for m in finals.values())
    print(f"RigL masks after the timed steps identical across selections: {same}")
    rows = [[name, f"{t * 1e3:.3f}", f"{ratio:.3f}"] for name, (t, ratio) in med.items()]
    return rows, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--step", action="store_true", help="also time the RigL train step")
    args = parser.parse_args()
    build_and_register("topk_ffi.cc", "EmrakulTopkMask", TARGET)
    if not native.available():
        raise SystemExit(f"the native kernel is {native.status()}")
    bad = 0
    for algorithm in ALGORITHMS:
        b = check(algorithm)
        print(f"{algorithm}: masks that differ from topk_mask: {b} of 401 checks")
        bad += b
    rng = np.random.default_rng(1)
    rows = []
    fns = {
        "xla": jax.jit(functools.partial(topk_mask, impl="xla")),
        **{a: jax.jit(functools.partial(ffi_topk_mask, algorithm=a)) for a in ALGORITHMS},
    }
    totals = dict.fromkeys(fns, 0.0)
    for n in (5120, 262144, 401408):  # the kernels of the 784-512-512-10 MLP
        for what, scores, k in rigl_like(n, rng):
            x = jnp.asarray(scores)
            want = np.asarray(fns["xla"](x, k))
            bad += sum(not np.array_equal(want, np.asarray(fns[a](x, k))) for a in ALGORITHMS)
            med = interleaved_medians(
                {name: lambda x=x, k=k, f=f: f(x, k) for name, f in fns.items()},
                rounds=args.rounds,
            )
            ms = {name: t * 1e3 for name, t in med.items()}
            for name in fns:
                totals[name] += ms[name]
            rows.append(
                [n, what, k, *(f"{ms[name]:.3f}" for name in fns)]
                + [f"{ms['xla'] / ms[a]:.2f}x" for a in ALGORITHMS]
            )
    rows.append(
        ["all six", "", "", *(f"{totals[name]:.3f}" for name in fns)]
        + [f"{totals['xla'] / totals[a]:.2f}x" for a in ALGORITHMS]
    )
    print(f"\nmedians of {args.rounds} interleaved rounds; the timed masks were checked too")
    header = ["n", "selection", "k", "topk_mask (XLA) ms", "C++ radix ms", "native ms"]
    print(markdown_table([*header, "radix speed-up", "native speed-up"], rows))
    print(f"masks that differ from topk_mask, all checks: {bad}")
    if args.step:
        step_rows, same = time_step(rounds=50, repeats=3)
        print("\ntrain steps, medians of 3 x 50 interleaved rounds")
        print(markdown_table(["step", "ms", "ratio to dense"], step_rows))
        bad += not same
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
