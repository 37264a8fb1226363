"""Host steps per second of the compiled loop: GMP and RigL vs the dense controller.

Run: ``python -m benchmarks.loop_throughput [--seeds 4] [--intervals 10] [--rounds 7]``

Each controller's chunk of ``--intervals`` surgery intervals (100 host steps each by default, the
default experiment's MLP) is compiled once, then the chunks are timed interleaved; medians.
Target: GMP and RigL at least 0.95x the dense loop's steps/s.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks._timing import interleaved_medians, markdown_table
from emrakul.lab.loop import make_train
from experiments.configs.default import get_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--intervals", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--controllers", default="dense,gmp,rigl")
    args = parser.parse_args()
    config = get_config()
    names = args.controllers.split(",")
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(args.seeds))
    fns, steps = {}, {}
    for name in names:
        trainer = make_train(config, name)
        state = jax.jit(jax.vmap(trainer.init))(keys)
        run = jax.jit(jax.vmap(trainer.run, in_axes=(0, None)), static_argnums=1)
        # Start mid-run (at 40% of training) so that GMP is pruning and RigL is swapping.
        warm = max(1, int(0.4 * trainer.num_intervals))
        state, _ = run(state, warm)
        fns[name] = lambda run=run, state=state: run(state, args.intervals)
        steps[name] = args.intervals * trainer.steps_per_interval * args.seeds
        print(f"compiled {name}", flush=True)
    med = interleaved_medians(fns, rounds=args.rounds, warmup=1)
    base = steps[names[0]] / med[names[0]]
    rows = [
        [n, f"{med[n]:.3f}", f"{steps[n] / med[n]:.0f}", f"{steps[n] / med[n] / base:.3f}"]
        for n in names
    ]
    print(
        f"\njax {jax.__version__}, {jax.default_backend()}, {args.seeds} seeds vmapped, MLP "
        f"{list(config.host.width)}, batch {config.train.batch_size}, surgery every "
        f"{config.prune.every} steps, chunk of {args.intervals} intervals, median of {args.rounds}"
    )
    print(markdown_table(["controller", "s/chunk", "host steps/s", "ratio to dense"], rows))


if __name__ == "__main__":
    main()
