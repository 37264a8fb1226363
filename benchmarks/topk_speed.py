"""topk_mask vs jnp.argsort and jax.lax.top_k, 1e4 ... 1e7 elements (float32, k = 10%).

Run: ``python -m benchmarks.topk_speed [--sizes 10000,100000,1000000,10000000]``

Prints a markdown table of median times (interleaved repeats) and the ratios
``topk_mask / argsort`` and ``topk_mask / lax.top_k``. Target: at 1e6 elements topk_mask
costs at most 1/10 of argsort.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks._timing import interleaved_medians, markdown_table
from emrakul.masks import topk_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--rounds", type=int, default=0, help="0: chosen per size")
    args = parser.parse_args()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        x = jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.float32)
        k = n // 10
        mask_fn = jax.jit(topk_mask)
        sort_fn = jax.jit(jnp.argsort)
        lax_fn = jax.jit(lambda x, k=k: jax.lax.top_k(x, k)[1])
        assert int(mask_fn(x, k).sum()) == k
        rounds = args.rounds or (30 if n <= 10**6 else 5)
        med = interleaved_medians(
            {
                "topk_mask": lambda f=mask_fn, x=x, k=k: f(x, k),
                "argsort": lambda f=sort_fn, x=x: f(x),
                "lax.top_k": lambda f=lax_fn, x=x: f(x),
            },
            rounds=rounds,
            warmup=1,
        )
        rows.append(
            [
                f"{n:.0e}",
                f"{med['topk_mask'] * 1e3:.3f}",
                f"{med['argsort'] * 1e3:.2f}",
                f"{med['lax.top_k'] * 1e3:.2f}",
                f"{med['topk_mask'] / med['argsort']:.4f}",
                f"{med['topk_mask'] / med['lax.top_k']:.3f}",
            ]
        )
        print(f"n={n} done", flush=True)
    header = ["n", "topk_mask ms", "argsort ms", "lax.top_k ms", "mask/argsort", "mask/top_k"]
    print(f"\njax {jax.__version__}, backend {jax.default_backend()}, k = n/10, medians")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
