"""A sweep's seeds sharded over devices vs one device: wall time, and whether results agree.

Run: ``python -m benchmarks.sharded_sweep [--seeds 8] [--devices 8] [--controller gsnr]
[--steps 200] [--width 32] [--rounds 3]``

The script forces ``--devices`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``,
set before JAX is imported) and compiles the whole training run of ``--seeds`` vmapped seeds
(``jax.jit(jax.vmap(trainer.train))``) twice: unsharded (every seed on one device) and sharded
(the seeds split over a 1-D ``"seeds"`` mesh of all devices, :mod:`emrakul.sharding`). It times
compilation and the median of ``--rounds`` runs of each (interleaved), and compares the final
test accuracies, params and masks. The forced CPU devices share the machine's cores, so expect
no speed-up on a small machine.

Results are not bit-identical: each device runs the program for its ``seeds / devices`` seeds,
and XLA's CPU kernels (matmul blocking, reduction vectorisation) depend on that batch shape, so
sums associate differently and floats differ in the last bits - exactly as an unsharded sweep of
1 or 2 seeds differs from one of 8. In the default tiny run the masks, counters and test
accuracies still agree exactly and params to ~1e-7; in long runs a last-bit difference can flip
a near-tie mask decision and the seeds' trajectories then diverge (statistically equivalent,
not identical). See ``tests/test_sharding.py``.
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
from emrakul import sharding as shd  # noqa: E402
from emrakul.loop import make_train  # noqa: E402
from experiments.configs.default import get_config  # noqa: E402


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
    programs = {
        "unsharded": jax.jit(jax.vmap(trainer.train)),
        "sharded": jax.jit(
            jax.vmap(trainer.train),
            in_shardings=shd.seed_shardings(keys, mesh, args.seeds),
            out_shardings=shd.seed_shardings(out_shape, mesh, args.seeds),
        ),
    }
    inputs = {"unsharded": keys, "sharded": shd.shard_seeds(keys, mesh, args.seeds)}
    compiled, compile_s = {}, {}
    for name, fn in programs.items():
        t0 = time.perf_counter()
        compiled[name] = fn.lower(inputs[name]).compile()
        compile_s[name] = time.perf_counter() - t0
        print(f"compiled {name} in {compile_s[name]:.1f}s", flush=True)
    fns = {name: (lambda c=c, x=inputs[name]: c(x)) for name, c in compiled.items()}
    med = interleaved_medians(fns, rounds=args.rounds, warmup=1)
    results = {name: jax.tree.map(np.asarray, fn()) for name, fn in fns.items()}
    placed = jax.tree.leaves(fns["sharded"]()[0])
    on_devices = sorted({len(x.sharding.device_set) for x in placed})

    (s_a, _, t_a), (s_b, _, t_b) = results["sharded"], results["unsharded"]

    def max_diff(a, b):
        return max(
            float(np.max(np.abs(x - y), initial=0.0))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    acc_diff = max_diff(t_a["accuracy"], t_b["accuracy"])
    param_diff = max_diff(s_a.params, s_b.params)
    life = [jax.tree.leaves(s.opt_state.life) for s in (s_a, s_b)]
    same_masks = [  # per seed: every lifecycle leaf equal
        all(np.array_equal(x[i], y[i]) for x, y in zip(*life, strict=True))
        for i in range(args.seeds)
    ]
    steps = trainer.num_intervals * trainer.steps_per_interval * args.seeds
    rows = [
        [
            name,
            len(jax.devices()) if name == "sharded" else 1,
            f"{compile_s[name]:.1f}",
            f"{med[name]:.2f}",
            f"{steps / med[name]:.0f}",
            f"{np.mean(results[name][2]['accuracy']):.4f}",
        ]
        for name in ["unsharded", "sharded"]
    ]
    print(
        f"\njax {jax.__version__}, {jax.default_backend()}, {len(jax.devices())} forced devices "
        f"on {os.cpu_count()} cores; {args.seeds} seeds of {args.controller}, MLP "
        f"{list(config.host.width)}, {trainer.num_intervals * trainer.steps_per_interval} steps, "
        f"batch {config.train.batch_size}; run = median of {args.rounds} (interleaved); sharded "
        f"state on {on_devices} devices"
    )
    header = ["mode", "devices", "compile s", "run s", "host steps/s", "mean test acc"]
    print(markdown_table(header, rows))
    print()
    print(
        markdown_table(
            [
                "max abs diff test acc",
                "max abs diff final params",
                "seeds with identical masks",
                "test acc bit-identical",
                "params bit-identical",
            ],
            [
                [
                    f"{acc_diff:.3g}",
                    f"{param_diff:.3g}",
                    f"{sum(same_masks)}/{args.seeds}",
                    acc_diff == 0,
                    param_diff == 0,
                ]
            ],
        )
    )


if __name__ == "__main__":
    sys.exit(main(ARGS))
