"""Environment steps per second of the compiled DQN loop on Breakout-MinAtar, pruned vs dense.

Run: ``python -m benchmarks.dqn_speed [--widths 1,2] [--seeds 2] [--rounds 5]``
(``--widths 1,2,4`` adds the 4x-wide network; ``--network impala --widths 1,3`` times the Impala
ResNet instead of MinAtar's CNN; ``--conv-steps 0`` skips the convolution table).

For each width, the dense and the GMP DQN programs (:mod:`emrakul.lab.hosts.dqn`, default MinAtar
config: 4 environments, an update every 4 environment steps, batch 32, a surgery every
``--prune-every`` updates) are compiled once, advanced to 40% of training (GMP is then pruning),
and chunks of ``--intervals`` surgery intervals are timed interleaved (round-robin over every
program), ``--rounds`` times; the table reports medians, env steps counting all seeds and
environments. A second table times the MinAtar Q-network's forward + backward pass (batch 32) in
a jitted ``lax.scan`` with ``flax.linen.Conv`` against :class:`~emrakul.lab.hosts.rl_nets.Conv2D`
(shifted slices + one matmul), single and ``vmap``-ped over ``--seeds``.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks._timing import interleaved_medians, markdown_table
from emrakul.lab.hosts import dqn
from emrakul.lab.hosts.rl_nets import MinAtarQNetwork


class _FlaxConvQNetwork(nn.Module):
    """MinAtarQNetwork with ``flax.linen.Conv`` (same parameter shapes and names modulo the
    module name), the baseline of the convolution timing."""

    num_actions: int
    width: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(16 * self.width, (3, 3), padding="VALID")(obs))
        x = x.reshape(*x.shape[:-3], -1)
        x = nn.relu(nn.Dense(128 * self.width)(x))
        return nn.Dense(self.num_actions)(x)


def _scan_steps(module: nn.Module, seeds: int, steps: int):
    """A jitted ``lax.scan`` of ``steps`` SGD steps of a squared-Q loss (forward + backward)."""
    x = (jax.random.uniform(jax.random.PRNGKey(0), (32, 10, 10, 4)) < 0.1).astype(jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(1), seeds)

    def one(key):
        params = module.init(key, x)["params"]

        def body(p, _):
            g = jax.grad(lambda q: jnp.mean(module.apply({"params": q}, x) ** 2))(p)
            return optax.apply_updates(p, jax.tree.map(lambda v: -1e-3 * v, g)), None

        return jax.lax.scan(body, params, None, steps)[0]

    fn = jax.jit(lambda k: one(k[0])) if seeds == 1 else jax.jit(jax.vmap(one))
    return lambda: fn(keys)


def conv_table(seeds: int, steps: int, rounds: int) -> str:
    """Milliseconds per forward+backward step, nn.Conv vs Conv2D (single and vmapped)."""
    fns = {}
    for s in sorted({1, seeds}):
        fns[("nn.Conv", s)] = _scan_steps(_FlaxConvQNetwork(3), s, steps)
        fns[("Conv2D", s)] = _scan_steps(MinAtarQNetwork(3), s, steps)
    med = interleaved_medians({f"{k[0]}/{k[1]}": f for k, f in fns.items()}, rounds=rounds)
    rows = []
    for s in sorted({1, seeds}):
        flax_ms = 1e3 * med[f"nn.Conv/{s}"] / steps
        ours_ms = 1e3 * med[f"Conv2D/{s}"] / steps
        rows.append([s, f"{flax_ms:.3f}", f"{ours_ms:.3f}", f"{flax_ms / ours_ms:.1f}x"])
    header = ["seeds (vmap)", "nn.Conv ms/step", "Conv2D ms/step", "speed-up"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="1,2", help="comma-separated width multipliers")
    parser.add_argument("--seeds", type=int, default=2, help="seeds vmapped in one program")
    parser.add_argument("--intervals", type=int, default=1, help="surgery intervals per chunk")
    parser.add_argument("--prune-every", type=int, default=1000, help="updates per interval")
    parser.add_argument("--total-intervals", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conv-steps", type=int, default=200)
    parser.add_argument("--skip-dqn", action="store_true", help="only the convolution timing")
    parser.add_argument("--network", default="minatar", choices=dqn.NETWORKS)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    print(f"jax {jax.__version__}, {jax.default_backend()}, {args.seeds} seeds vmapped", flush=True)
    if not args.skip_dqn:
        fns, steps = {}, {}
        for width in widths:
            for name in ("dense", "gmp"):
                base = dqn.DQNConfig(
                    width=width,
                    controller=name,
                    prune_every=args.prune_every,
                    network=args.network,
                )
                per = args.prune_every * base.train_every
                config = base._replace(
                    total_env_steps=base.learning_starts + args.total_intervals * per
                )
                program = dqn.make_dqn(config)
                state = jax.jit(jax.vmap(program.init))(keys)
                run = jax.jit(jax.vmap(program.run, in_axes=(0, None)), static_argnums=1)
                for _ in range(max(1, int(0.4 * program.num_intervals) // args.intervals)):
                    state, _ = run(state, args.intervals)  # one compiled chunk, reused
                fns[(width, name)] = lambda run=run, state=state: run(state, args.intervals)
                steps[(width, name)] = args.intervals * per * args.seeds
                print(f"compiled width {width} {name}", flush=True)
        med = interleaved_medians(fns, rounds=args.rounds, warmup=1)
        rows = []
        for width in widths:
            dense, gmp = med[(width, "dense")], med[(width, "gmp")]
            rows.append([width, f"{steps[(width, 'dense')] / dense:.0f}",
                         f"{steps[(width, 'gmp')] / gmp:.0f}", f"{gmp / dense:.3f}"])  # fmt: skip
        print(
            f"\nBreakout-MinAtar DQN ({args.network}), chunk of {args.intervals} x "
            f"{args.prune_every} updates "
            f"(GMP to 95% ERK, surgery every {args.prune_every} updates), median of "
            f"{args.rounds} interleaved rounds"
        )
        header = ["width", "dense env steps/s", "gmp env steps/s", "gmp/dense time"]
        print(markdown_table(header, rows))
    if args.conv_steps > 0:
        steps = args.conv_steps
        print(f"\nMinAtar Q-network forward+backward (batch 32), lax.scan of {steps} steps")
        print(conv_table(args.seeds, steps, args.rounds))


if __name__ == "__main__":
    main()
