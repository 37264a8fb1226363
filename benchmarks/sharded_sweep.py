"""A sweep's seeds sharded over devices vs one device: wall time, and whether results agree.

Run: ``python -m benchmarks.sharded_sweep [--seeds 8] [--devices 8] [--controller gsnr]
[--steps 200] [--width 32] [--rounds 3] [--loops vmap,map]``

The script forces ``--devices`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``,
set before JAX is imported) and compiles the whole training run of ``--seeds`` seeds for each
seed loop (:func:`emrakul.lab.sharding.over_seeds`) twice: unsharded (every seed on one device) and
sharded (the seeds split over a 1-D ``"seeds"`` mesh of all devices). It times compilation and
the median of ``--rounds`` runs of each (interleaved), compares the final test accuracies,
params and masks of sharded vs unsharded, and checks seed 0 against seed 0 trained alone. The
forced CPU devices share the machine's cores, so expect no speed-up on a small machine.

``vmap`` results are not bit-identical: each device runs the batched program for its
``seeds / devices`` seeds, and XLA's CPU kernels (matmul blocking, reduction vectorisation)
depend on that batch shape, so sums associate differently and floats differ in the last bits -
exactly as an unsharded sweep of 1 or 2 seeds differs from one of 8; in long runs a last-bit
difference can flip a near-tie mask decision and the seeds' trajectories then diverge
(statistically equivalent, not identical). ``map`` runs every seed through the same one-seed
program (``lax.map``; sharded: ``shard_map`` of it), so sharded, unsharded and alone agree bit
for bit. See ``tests/test_sharding.py``.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--controller", default="gsnr")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--width", default="32", help="comma-separated hidden widths")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", default="vmap,map", help="seed loops to compare (vmap, map)")
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # before JAX initialises its backends
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={ARGS.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._timing import interleaved_medians, markdown_table  # noqa: E402
from emrakul.lab import sharding as shd  # noqa: E402
from emrakul.lab.loop import make_train  # noqa: E402
from experiments.configs.default import get_config  # noqa: E402


def _max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _same(a, b) -> bool:
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def main(args: argparse.Namespace) -> None:
    config = get_config()
    config.host.width = tuple(int(w) for w in args.width.split(","))
    config.data.num_samples = args.samples
    config.train.steps = args.steps
    config.prune.every = args.every
    trainer = make_train(config, args.controller)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(args.seeds))
    mesh = shd.seed_mesh()
    out_shape = jax.eval_shape(jax.vmap(trainer.train), keys)
    in_sh = shd.seed_shardings(keys, mesh, args.seeds)
    out_sh = shd.seed_shardings(out_shape, mesh, args.seeds)
    loops = [x.strip() for x in args.loops.split(",")]
    programs, inputs = {}, {}
    for loop in loops:
        programs[f"{loop} unsharded"] = jax.jit(shd.over_seeds(trainer.train, loop))
        inputs[f"{loop} unsharded"] = keys
        programs[f"{loop} sharded"] = jax.jit(
            shd.over_seeds(trainer.train, loop, mesh), in_shardings=in_sh, out_shardings=out_sh
        )
        inputs[f"{loop} sharded"] = shd.shard_seeds(keys, mesh, args.seeds)
    compiled, compile_s = {}, {}
    for name, fn in programs.items():
        t0 = time.perf_counter()
        compiled[name] = fn.lower(inputs[name]).compile()
        compile_s[name] = time.perf_counter() - t0
        print(f"compiled {name} in {compile_s[name]:.1f}s", flush=True)
    fns = {name: (lambda c=c, x=inputs[name]: c(x)) for name, c in compiled.items()}
    med = interleaved_medians(fns, rounds=args.rounds, warmup=1)
    results = {name: jax.tree.map(np.asarray, fn()) for name, fn in fns.items()}
    # seed 0 trained alone: the reference a seed-count-independent run must reproduce
    alone = jax.tree.map(np.asarray, jax.jit(trainer.train)(keys[0]))
    seed0 = lambda tree: jax.tree.map(lambda x: x[0], tree)
    steps = trainer.num_intervals * trainer.steps_per_interval * args.seeds
    rows, agree = [], []
    for name in programs:
        loop, mode = name.split()
        (state, _, test) = results[name]
        rows.append(
            [
                loop,
                mode,
                len(jax.devices()) if mode == "sharded" else 1,
                f"{compile_s[name]:.1f}",
                f"{med[name]:.2f}",
                f"{steps / med[name]:.0f}",
                f"{np.mean(test['accuracy']):.4f}",
                _same(seed0(results[name]), alone),
            ]
        )
        if mode == "sharded":
            (ref_state, _, ref_test) = results[f"{loop} unsharded"]
            life = [jax.tree.leaves(x.opt_state.life) for x in (state, ref_state)]
            same_masks = [  # per seed: every lifecycle leaf equal
                all(np.array_equal(x[i], y[i]) for x, y in zip(*life, strict=True))
                for i in range(args.seeds)
            ]
            agree.append(
                [
                    loop,
                    f"{_max_diff(test['accuracy'], ref_test['accuracy']):.3g}",
                    f"{_max_diff(state.params, ref_state.params):.3g}",
                    f"{sum(same_masks)}/{args.seeds}",
                    _same(results[name], results[f"{loop} unsharded"]),
                ]
            )
    print(
        f"\njax {jax.__version__}, {jax.default_backend()}, {len(jax.devices())} forced devices "
        f"on {os.cpu_count()} cores; {args.seeds} seeds of {args.controller}, MLP "
        f"{list(config.host.width)}, {trainer.num_intervals * trainer.steps_per_interval} steps, "
        f"batch {config.train.batch_size}; run = median of {args.rounds} (interleaved)"
    )
    header = ["seed loop", "mode", "devices", "compile s", "run s", "host steps/s",
              "mean test acc", "seed 0 = seed 0 alone (every leaf)"]  # fmt: skip
    print(markdown_table(header, rows))
    print()
    header = ["seed loop", "max abs diff test acc, sharded vs unsharded", "max abs diff params",
              "seeds with identical masks", "every leaf bit-identical"]  # fmt: skip
    print(markdown_table(header, agree))


if __name__ == "__main__":
    sys.exit(main(ARGS))
