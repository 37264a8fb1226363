"""A whole pruned run with lysis while training, against the same run kept masked.

Run: ``python -m benchmarks.lysis_run [--steps 600] [--every 50] [--multiple_of 64]``

The MLP ``784-1024-1024-10``, batch 256, Adam 1e-3, on a synthetic task (labels of a random
teacher MLP), pruned by ``emrakul.wrap`` with GMP to 75% of the units of each hidden layer
(group pruning, :func:`emrakul.export.group_pruning`: the kernel columns with their biases; the
ramp from 10% to 50% of the run, a surgery every ``--every`` steps). Two runs from the same
initialisation, one jitted step per call:

* ``masked``: the model stays dense in memory and compute;
* ``lysed``: every ``--every`` steps :func:`emrakul.export.lyse_training` removes the lysed units
  (widths kept at multiples of ``--multiple_of``), and the step is re-jitted when it did.

Printed: wall-clock of each run (compilations and lyses included), the number of compactions,
the seconds spent lysing and compiling (``lyse_training`` calls and each first step after a
(re-)jit, the first compilation included), the final training loss of both, the widths, and
the bytes of params plus optimizer state (Adam and Emrakul's state) at the end.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import emrakul
from benchmarks._timing import markdown_table
from benchmarks.lysis_speed import _MLP
from emrakul import export


def _make_step(apply, groups, tx):
    def loss(p, s, x, y):
        logits = apply({"params": groups.tied(p, s)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, x, y):
        value, g = jax.value_and_grad(loss)(p, s, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    return step


def _bytes(tree) -> int:
    return sum(np.size(a) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree) if np.ndim(a))


def _run(model, v, batches, args, lysis: bool) -> dict:
    x0 = batches[0][0][:2]
    groups = export.group_pruning(export.dependency_graph(model.apply, v, x0), v)
    tx = emrakul.wrap(
        optax.adam(1e-3),
        emrakul.controllers.gmp(start=0.1, end=0.5),
        total_steps=args.steps,
        sparsity=0.75,
        every=args.every,
        filter=groups.filter,
        structure=groups.structure,
    )
    apply, params, state = model.apply, v["params"], tx.init(v["params"])
    step, compactions, losses = _make_step(apply, groups, tx), 0, []
    overhead, fresh = 0.0, True  # seconds in lyse_training and in compiling steps
    t0 = time.perf_counter()
    for i in range(args.steps):
        x, y = batches[i % len(batches)]
        t1 = time.perf_counter()
        params, state, value = step(params, state, x, y)
        if fresh:
            jax.block_until_ready(params)
            overhead += time.perf_counter() - t1
            fresh = False
        losses.append(value)
        if lysis and (i + 1) % args.every == 0:
            jax.block_until_ready(params)
            t1 = time.perf_counter()
            out = export.lyse_training(
                apply, {"params": params}, state, groups, x0, multiple_of=args.multiple_of
            )
            if out.plan:
                apply, params, state, groups = (
                    out.apply,
                    out.variables["params"],
                    out.opt_state,
                    out.groups,
                )
                step, compactions, fresh = _make_step(apply, groups, tx), compactions + 1, True
            overhead += time.perf_counter() - t1
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    final = float(np.mean([float(v) for v in losses[-20:]]))
    widths = [int(np.shape(params[f"Dense_{i}"]["kernel"])[1]) for i in range(2)]
    return {
        "seconds": seconds,
        "compactions": compactions,
        "overhead": overhead,
        "loss": final,
        "widths": widths,
        "bytes": _bytes(params) + _bytes(state),
        "sparsity": float(emrakul.sparsity(state)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--multiple_of", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    teacher = [rng.normal(size=(784, 64)) / 28, rng.normal(size=(64, 10)) / 8]
    batches = []
    for _ in range(20):
        x = rng.normal(size=(256, 784)).astype(np.float32)
        y = np.argmax(np.tanh(x @ teacher[0]) @ teacher[1], axis=1)
        batches.append((jnp.asarray(x), jnp.asarray(y)))
    model = _MLP()
    v = model.init(jax.random.key(0), batches[0][0][:2])
    rows = []
    for name, lysis in (("masked", False), ("lysed", True)):
        r = _run(model, v, batches, args, lysis)
        rows.append(
            [
                name,
                f"{r['seconds']:.1f}",
                str(r["compactions"]),
                f"{r['overhead']:.1f}",
                f"{r['loss']:.4f}",
                "-".join(str(w) for w in (784, *r["widths"], 10)),
                f"{r['sparsity']:.3f}",
                f"{r['bytes'] / 2**20:.2f}",
            ]
        )
        print(f"{name} done in {r['seconds']:.1f} s", flush=True)
    base, lysed = float(rows[0][1]), float(rows[1][1])
    print(f"\nGMP to 75% units, {args.steps} steps, batch 256; lysis every {args.every} steps")
    header = [
        "run",
        "wall s",
        "compactions",
        "lysis + compile s",
        "final loss",
        "widths",
        "sparsity",
        "state MiB",
    ]
    print(markdown_table(header, rows))
    print(f"wall-clock ratio masked / lysed: {base / lysed:.2f}x")


if __name__ == "__main__":
    main()
