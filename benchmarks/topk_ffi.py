"""The library's native top-k kernel against ``topk_mask``'s XLA implementation.

``emrakul/masks/_native/topk.cc`` (:mod:`emrakul.masks.native`, opt-in) computes the exact
top-k mask as an XLA FFI custom call: two-threshold count passes vectorised by the compiler
narrow a bracket around the k-th value, an AVX-512 compaction gathers the entries inside it,
``std::nth_element`` picks the threshold. This script builds it (``native.enable``'s compile:
the system's C++ compiler, ``-O3 -march=native``, cached), checks that it gives exactly the XLA
implementation's masks on random inputs (ties, -inf, NaN, -0.0, infinities, denormals, k = 0 and
k = n, several rows), then times both, interleaved, at the sizes of the 784-512-512-10 MLP's
kernels on the two selections of a RigL update (keep the largest |w| among the active entries,
the rest -inf; regrow the largest |g| among the others). With ``--step`` it also times the RigL
train step of :mod:`benchmarks.step_overhead` with each selection against the dense step, as
ratios measured in one run.

Run: ``python -m benchmarks.topk_ffi [--rounds 100] [--step]``
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import interleaved_medians, markdown_table, step_ratios
from emrakul.masks import native, topk_mask

SELECTIONS = {
    "xla": functools.partial(topk_mask, impl="xla"),
    "native": functools.partial(topk_mask, impl="native"),
}


def random_input(t: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The ``t``-th checked input: normal scores, with ties, -inf, NaN and -0.0, or infinities
    and denormals in turn, and ``k`` anywhere in ``[0, n]``."""
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
    return x, k


def check(trials: int = 400) -> int:
    """Number of random inputs on which the native kernel's mask differs from XLA's."""
    rng = np.random.default_rng(0)
    ours, theirs = (jax.jit(SELECTIONS[name]) for name in ("xla", "native"))
    bad = 0
    for t in range(trials):
        x, k = random_input(t, rng)
        bad += not np.array_equal(np.asarray(ours(x, k)), np.asarray(theirs(x, k)))
    # several rows with their own counts, through the custom call's row loop
    x = rng.standard_normal((6, 700)).astype(np.float32)
    x[2] = np.round(x[2])  # ties
    k = jnp.asarray(np.array([0, 1, 350, 699, 700, 17], np.int32))
    want = topk_mask(jnp.asarray(x), k, axis=1, impl="xla")
    got = topk_mask(jnp.asarray(x), k, axis=1, impl="native")
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
    also whether the RigL runs ended with identical masks."""
    from benchmarks import step_overhead

    copy = lambda t: jax.tree.map(jnp.copy, t)
    selects = {"topk_mask": SELECTIONS["xla"], "native": SELECTIONS["native"]}
    runs, finals = {}, {}
    for name, select in selects.items():
        params, opt, vit, masks, steps = step_overhead.build(256, select)
        if not runs:
            runs["dense"] = (steps["dense"], [copy(params), copy(opt)], 2)
            runs["vitals+masks"] = (steps["vitals+masks"], [copy(params), copy(opt), vit, masks], 3)
        finals[name] = [copy(params), copy(opt), copy(vit), copy(masks)]
        runs[f"+ rigl masks ({name})"] = (steps["+ rigl masks"], finals[name], 4)
    med = step_ratios(runs, rounds=rounds, repeats=repeats)
    # The RigL runs took the same steps from the same start: their masks must agree.
    same = all(step_overhead.same_masks(m[3], finals["topk_mask"][3]) for m in finals.values())
    print(f"RigL masks after the timed steps identical across selections: {same}")
    rows = [[name, f"{t * 1e3:.3f}", f"{ratio:.3f}"] for name, (t, ratio) in med.items()]
    return rows, same


def time_selections(rounds: int) -> tuple[list[list[object]], int]:
    """Table rows of the six selections of a RigL update, and how many timed masks differ."""
    rng = np.random.default_rng(1)
    fns = {name: jax.jit(fn) for name, fn in SELECTIONS.items()}
    rows, bad, totals = [], 0, dict.fromkeys(fns, 0.0)
    for n in (5120, 262144, 401408):  # the kernels of the 784-512-512-10 MLP
        for what, scores, k in rigl_like(n, rng):
            x = jnp.asarray(scores)
            bad += not np.array_equal(np.asarray(fns["xla"](x, k)), np.asarray(fns["native"](x, k)))
            med = interleaved_medians(
                {name: lambda x=x, k=k, f=f: f(x, k) for name, f in fns.items()}, rounds=rounds
            )
            ms = {name: t * 1e3 for name, t in med.items()}
            for name in fns:
                totals[name] += ms[name]
            speed_up = f"{ms['xla'] / ms['native']:.2f}x"
            rows.append([n, what, k, f"{ms['xla']:.3f}", f"{ms['native']:.3f}", speed_up])
    total_speed_up = f"{totals['xla'] / totals['native']:.2f}x"
    rows.append(
        ["all six", "", "", f"{totals['xla']:.3f}", f"{totals['native']:.3f}", total_speed_up]
    )
    return rows, bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--step", action="store_true", help="also time the RigL train step")
    args = parser.parse_args()
    if not native.available():  # builds the kernel; impl= chooses it per call
        raise SystemExit(f"the native kernel is {native.status()}")
    bad = check()
    print(f"native: masks that differ from topk_mask: {bad} of 401 checks")
    rows, timed_bad = time_selections(args.rounds)
    bad += timed_bad
    print(f"\nmedians of {args.rounds} interleaved rounds; the timed masks were checked too")
    header = ["n", "selection", "k", "topk_mask (XLA) ms", "native ms", "native speed-up"]
    print(markdown_table(header, rows))
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
