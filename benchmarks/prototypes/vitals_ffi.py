"""Would a fused CPU kernel bring the vital-signs update under 1.05x of the dense step? A prototype.

XLA:CPU computes :func:`emrakul.vitals.update` as one loop per output array, each re-reading
the gradient. ``benchmarks/prototypes/vitals_ffi.cc`` does one leaf's update in a single fused,
vectorised pass (OpenMP, two threads) as an XLA FFI custom call that updates the state in place.
This script compiles it with the system's C++ compiler, checks it against ``vitals.update``
(three steps with masks, a zero-gradient leaf and a NaN leaf: EMAs within float rounding, signs,
ages, debias, counts exactly equal), then times, interleaved in one process, the train steps of
``benchmarks.step_overhead`` (MLP 784-512-512-10, Adam, batch 256) with the XLA update and with
the kernel. It is a benchmark, not library code: nothing in ``emrakul`` uses it.

Run: ``python -m benchmarks.prototypes.vitals_ffi [--rounds 50] [--repeats 3] [--block 1]
[--trace 0]``.
``--block K`` times K consecutive steps of one variant per round (a training loop's steady
state) instead of one; ``--trace N`` then profiles N consecutive steps of each
variant with ``jax.profiler`` and prints the mean time per step of the custom calls and of
XLA's biggest operations.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import step_overhead
from benchmarks._timing import carry_runner, markdown_table, step_ratios
from benchmarks.prototypes._ffi import build_and_register
from emrakul import vitals
from emrakul.vitals.state import VitalsState, update_leaves

TARGET = "emrakul_vitals_leaf_prototype"


def ffi_update(state: VitalsState, params, grads, masks=None, decay: float = 0.99) -> VitalsState:
    """``vitals.update`` (default thresholds, float32 leaves) with the kernel, leaf by leaf."""
    scalars = [jnp.asarray(x, jnp.float32) for x in (decay, 1e-8, 1e-8)]

    def leaf_update(m, v, fr, last, age, debias, w, g, mask):
        mask = jnp.broadcast_to(jnp.asarray(True if mask is None else mask), w.shape)
        shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (m, v, fr, last, age)]
        call = jax.ffi.ffi_call(
            TARGET,
            (*shapes, jax.ShapeDtypeStruct((), jnp.bool_)),
            input_output_aliases={3: 0, 4: 1, 5: 2, 6: 3, 7: 4},
        )
        *new, finite = call(g, w, mask, m, v, fr, last, age, *scalars)
        return (*new, jnp.where(finite, debias * scalars[0], debias), finite)

    return update_leaves(state, params, grads, masks, leaf_update)


def check() -> list[str]:
    """Fields on which the kernel differs from ``vitals.update`` over three steps."""
    rng = np.random.default_rng(0)
    params = {
        "a": jnp.asarray(rng.normal(size=(300, 70)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(70,)), jnp.float32),
        "z": jnp.asarray(rng.normal(size=(33,)), jnp.float32),
        "s": jnp.asarray(rng.normal(size=(40,)), jnp.float32),  # ages saturate here
    }
    masks = {"a": jnp.asarray(rng.random((300, 70)) < 0.3), "b": True, "z": True, "s": True}
    start = vitals.init(params)
    start = start._replace(age={**start.age, "s": jnp.full((40,), 65533, jnp.uint16)})
    want = got = start
    ours, proto = jax.jit(vitals.update), jax.jit(ffi_update)
    for step in range(3):
        grads = {k: jnp.asarray(rng.normal(size=p.shape), jnp.float32) for k, p in params.items()}
        grads["a"] = jnp.where(rng.random((300, 70)) < 0.2, 0.0, grads["a"])  # zero gradients
        grads["z"] = jnp.zeros(33) if step == 1 else grads["z"].at[5].set(jnp.nan)  # NaN leaf
        grads["s"] = jnp.zeros(40)  # inert: the age counts up to 65535 and stays there
        want = ours(want, params, grads, masks)
        got = proto(got, params, grads, masks)
    bad = []
    for name in VitalsState._fields:
        a, b = getattr(want, name), getattr(got, name)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            x, y = np.asarray(x), np.asarray(y)
            same = (
                np.allclose(x, y, rtol=1e-5, atol=1e-7) if x.dtype.kind == "f" else (x == y).all()
            )
            if not same:
                bad.append(name)
    return bad


def main() -> None:
    """Checks the kernel, then times the steps and prints ratios to the dense step."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--block", type=int, default=1, help="consecutive steps per round")
    parser.add_argument("--trace", type=int, default=0, help="profile this many steps; 0: off")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    build_and_register("vitals_ffi.cc", "EmrakulVitalsLeaf", TARGET, openmp=True)
    bad = check()
    print(f"fields that differ from vitals.update after 3 steps: {bad or 'none'}")

    params, opt, vit, masks, steps = step_overhead.build(256)
    kernel_step = step_overhead.build(256, update=ffi_update)[4]["vitals+masks"]
    copy = lambda t: jax.tree.map(jnp.copy, t)
    steps = {
        "dense": (steps["dense"], [copy(params), copy(opt)], 2),
        "vitals+masks (XLA)": (
            steps["vitals+masks"],
            [copy(params), copy(opt), copy(vit), masks],
            3,
        ),
        "vitals+masks (C++ kernel)": (kernel_step, [copy(params), copy(opt), copy(vit), masks], 3),
    }

    med = step_ratios(steps, rounds=args.rounds, repeats=args.repeats, block=args.block)
    rows = [[name, f"{t * 1e3:.3f}", f"{ratio:.3f}"] for name, (t, ratio) in med.items()]
    print(f"\nmedians of {args.repeats} x {args.rounds} interleaved rounds of {args.block} step(s)")
    print(markdown_table(["step", "ms", "ratio to dense"], rows))
    for name in list(steps)[1:] if args.trace else []:
        print(f"\n{name}: mean us per step over {args.trace} traced steps")
        for op, us in _trace(carry_runner(*steps[name]), args.trace)[:8]:
            print(f"  {us:8.1f}  {op}")
    if bad:
        raise SystemExit(1)


def _trace(fn, steps: int) -> list[tuple[str, float]]:
    """Mean microseconds per step of each XLA operation over ``steps`` profiled calls."""
    import collections
    import glob
    import gzip
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(fn())
        (path,) = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    total = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and (
            "ffi_call" in name or "fusion" in name or name.startswith(("dot", "copy"))
        ):
            total[name] += e["dur"] / steps
    return total.most_common()


if __name__ == "__main__":
    main()
