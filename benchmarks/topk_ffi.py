"""Would a hand-written CPU kernel make exact selection fast enough? A measured prototype.

``benchmarks/topk_ffi.cc`` is an exact top-k mask by radix select (a histogram of the top 11
bits of the floats' ordered integer keys, a gather of the one bucket holding the k-th largest,
``std::nth_element`` on it, a pass that writes the mask with ties broken by index), registered
as an XLA FFI custom call. This script compiles it with the system's C++ compiler, checks that
it gives exactly :func:`emrakul.masks.topk_mask`'s masks on random inputs (ties, -inf, NaN,
-0.0, k = 0 and k = n), then times both, interleaved, at the sizes of the foundation issue's
MLP kernels. It is a benchmark, not library code: nothing in ``emrakul`` uses it.

Run: ``python -m benchmarks.topk_ffi [--rounds 100] [--cxx g++]``
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import interleaved_medians, markdown_table
from emrakul.masks import topk as tk
from emrakul.masks import topk_mask

TARGET = "emrakul_topk_mask_prototype"


def build(cxx: str, out_dir: str) -> str:
    """Compiles ``topk_ffi.cc`` into a shared library and returns its path."""
    if shutil.which(cxx) is None:
        raise SystemExit(f"no C++ compiler {cxx!r} on PATH (pass --cxx)")
    src = os.path.join(os.path.dirname(__file__), "topk_ffi.cc")
    lib = os.path.join(out_dir, "libtopk_ffi.so")
    cmd = [cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
    subprocess.run([*cmd, f"-I{jax.ffi.include_dir()}", src, "-o", lib], check=True)
    return lib


def ffi_topk_mask(scores: jax.Array, k) -> jax.Array:
    """The prototype with ``topk_mask``'s contract for ``axis=None``."""
    x = tk._as_float(scores).reshape(1, -1)  # the same NaN / -0.0 / denormal handling
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, x.shape[1]).reshape(1)
    call = jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(x.shape, jnp.bool_), vmap_method="sequential"
    )
    return call(x, k).reshape(jnp.shape(scores))


def check(trials: int = 400) -> int:
    """Number of random inputs on which the prototype's mask differs from ``topk_mask``."""
    rng = np.random.default_rng(0)
    ours, proto = jax.jit(topk_mask), jax.jit(ffi_topk_mask)
    bad = 0
    for t in range(trials):
        n = int(rng.choice([1, 7, 64, 513, 2048, 5120]))  # few shapes: few compilations
        x = rng.standard_normal(n).astype(np.float32)
        if t % 4 == 1:
            x = np.round(x * 3) / 3  # many ties
        elif t % 4 == 2:
            x[rng.random(n) < 0.5] = -np.inf  # masked-out entries, as in RigL
        elif t % 4 == 3:
            x[rng.random(n) < 0.2] = np.nan
            x[rng.random(n) < 0.2] = -0.0
        k = int(rng.choice([0, n, int(rng.integers(0, n + 1))]))
        bad += not np.array_equal(np.asarray(ours(x, k)), np.asarray(proto(x, k)))
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--cxx", default="g++")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = ctypes.cdll.LoadLibrary(build(args.cxx, tmp))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.EmrakulTopkMask), platform="cpu")
    bad = check()
    print(f"masks that differ from topk_mask on 400 random inputs: {bad}")
    rng = np.random.default_rng(1)
    rows = []
    ours, proto = jax.jit(topk_mask), jax.jit(ffi_topk_mask)
    for n in (5120, 262144, 401408):  # the kernels of the 784-512-512-10 MLP
        x = jnp.asarray(rng.standard_normal(n), jnp.float32)
        k = n // 30  # RigL's regrowth count at 90% sparsity, drop fraction 0.3
        med = interleaved_medians(
            {"xla": lambda x=x, k=k, f=ours: f(x, k), "ffi": lambda x=x, k=k, f=proto: f(x, k)},
            rounds=args.rounds,
        )
        rows.append(
            [
                n,
                f"{med['xla'] * 1e3:.3f}",
                f"{med['ffi'] * 1e3:.3f}",
                f"{med['xla'] / med['ffi']:.2f}x",
            ]
        )
    print(f"\nmedians of {args.rounds} interleaved rounds, k = n/30, float32 normal scores")
    print(markdown_table(["n", "topk_mask ms", "C++ radix select ms", "speed-up"], rows))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
