"""The compiled, vmapped DQN with the hand-written replay buffer against flashbax's.

Run: ``python -m benchmarks.replay_speed [--seeds 4] [--prune-every 250] [--rounds 5]
[--repeats 5]`` (flashbax must be installed: ``pip install flashbax``).

The DQN program of :mod:`emrakul.lab.hosts.dqn` (Breakout-MinAtar, the default MinAtar config:
4 environments, an update every 4 environment steps, batch 32, a 100k-transition buffer; GMP
pruning by default) is built twice: once as it is, with :mod:`emrakul.lab.hosts.replay`, and
once with :mod:`emrakul.lab.hosts.flashbax_replay` put in place of the module attribute
``replay`` of every module under :mod:`emrakul.lab.hosts` that references it, while the program
is made and compiled. Each is ``vmap``-ped over ``--seeds`` seeds and ``jit``-ted, its chunk of
``--intervals`` surgery intervals compiled once (ahead of time, so the substitution is baked in),
and the program advanced ``--advance`` chunks. Before timing, the script checks the substitution
and the buffers: the flashbax program carries a flashbax state, and after the random-acting
warm-up (no sampling yet) both buffers hold the same transitions in the same slots. A first
table times the buffers alone on those warmed-up states (a vmapped scan of ``--ops-steps``
vectorised steps, each adding one transition per environment and sampling a batch). Then the
two DQN chunks are timed interleaved, ``--rounds`` rounds per repeat, ``--repeats`` repeats;
the table reports medians and the ratio flashbax / hand-written measured in the same repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import emrakul.lab.hosts as hosts_pkg
from benchmarks._timing import interleaved_medians, markdown_table
from emrakul.lab.hosts import dqn, flashbax_replay, replay

VARIANTS = {
    "hand-written (hosts.replay)": replay,
    "flashbax (hosts.flashbax_replay)": flashbax_replay,
}


def modules_using_replay() -> list[types.ModuleType]:
    """The modules under ``emrakul.lab.hosts`` whose attribute ``replay`` is the replay module.

    Raises:
      SystemExit: a module binds replay's functions directly (``from ...replay import add``),
        which a module-attribute patch would not reach.
    """
    found = []
    for info in pkgutil.walk_packages(hosts_pkg.__path__, hosts_pkg.__name__ + "."):
        if info.name in (replay.__name__, flashbax_replay.__name__):
            continue
        module = importlib.import_module(info.name)
        if getattr(module, "replay", None) is replay:
            found.append(module)
        direct = [
            name
            for name, value in vars(module).items()
            if getattr(value, "__module__", None) == replay.__name__ and callable(value)
            and not isinstance(value, type)
        ]  # fmt: skip
        if direct:
            raise SystemExit(f"{info.name} binds {direct} from replay directly; cannot patch")
    if not found:
        raise SystemExit("no module under emrakul.lab.hosts references `replay`")
    return found


def build(config: dqn.DQNConfig, buffer: types.ModuleType, keys: jax.Array, intervals: int):
    """``(state after init, compiled chunk)`` of the vmapped DQN with ``buffer`` as ``replay``."""
    with contextlib.ExitStack() as stack:
        for module in modules_using_replay():
            stack.enter_context(mock.patch.object(module, "replay", buffer))
        program = dqn.make_dqn(config)
        state = jax.jit(jax.vmap(program.init))(keys)
        run = jax.jit(jax.vmap(program.run, in_axes=(0, None)), static_argnums=1)
        compiled = run.lower(state, intervals).compile()
    return state, compiled


def check_buffers(states: dict) -> None:
    """The flashbax program carries a flashbax state, and both hold the same transitions."""
    ours, theirs = (states[name].buffer for name in VARIANTS)
    if not isinstance(ours, replay.ReplayState) or not isinstance(
        theirs, flashbax_replay.FlashbaxReplayState
    ):
        raise SystemExit(f"substitution failed: {type(ours).__name__}, {type(theirs).__name__}")
    size_ours = np.asarray(ours.size)
    size_theirs = np.asarray(jax.vmap(flashbax_replay.size)(theirs))
    if not np.array_equal(size_ours, size_theirs):
        raise SystemExit(f"buffer sizes differ after warm-up: {size_ours} vs {size_theirs}")
    for a, b in zip(jax.tree.leaves(ours.storage), jax.tree.leaves(theirs.storage), strict=True):
        if not np.array_equal(np.asarray(a), np.asarray(b)[:, 0]):
            raise SystemExit("buffer contents differ after warm-up")
    print(f"checked: same {int(size_ours[0])} warm-up transitions per seed in both buffers")


def buffer_ops(buffer: types.ModuleType, example, num_envs: int, batch_size: int, steps: int):
    """A jitted, vmapped ``lax.scan`` of ``steps`` (add ``num_envs`` transitions, sample
    ``batch_size``) on a buffer state, as the DQN's vectorised step does; returns a checksum."""

    def one(state, key):
        def body(carry, i):
            state, total = carry
            batch = jax.tree.map(
                lambda x: jnp.broadcast_to(i.astype(x.dtype), (num_envs, *x.shape)), example
            )
            state = buffer.add(state, batch)
            sampled = buffer.sample(state, jax.random.fold_in(key, i), batch_size)
            return (
                state,
                total + sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(sampled)),
            ), None

        return jax.lax.scan(body, (state, jnp.float32(0)), jnp.arange(steps))[0][1]

    return jax.jit(jax.vmap(one))


def ops_table(states: dict, config: dqn.DQNConfig, keys: jax.Array, steps: int, rounds: int):
    """Milliseconds per (add, sample) step of each buffer alone, on the warmed-up DQN buffers."""
    example = jax.tree.map(lambda s: s[0, 0], states[next(iter(VARIANTS))].buffer.storage)
    fns = {}
    for name, buffer in VARIANTS.items():
        fn = buffer_ops(buffer, example, config.num_envs, config.batch_size, steps)
        fns[name] = lambda fn=fn, b=states[name].buffer: fn(b, keys)
    med = interleaved_medians(fns, rounds=rounds, warmup=1)
    rows = [[name, f"{med[name] * 1e3 / steps:.3f}"] for name in VARIANTS]
    names = list(VARIANTS)
    ratio = med[names[1]] / med[names[0]]
    return markdown_table(["buffer", "ms per add + sample"], rows) + f"\nratio: {ratio:.3f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=4, help="seeds vmapped in one program")
    parser.add_argument("--controller", default="gmp", help="pruning controller or 'dense'")
    parser.add_argument("--width", type=int, default=1, help="MinAtar network width multiplier")
    parser.add_argument("--prune-every", type=int, default=250, help="updates per interval")
    parser.add_argument("--intervals", type=int, default=1, help="surgery intervals per chunk")
    parser.add_argument("--total-intervals", type=int, default=10)
    parser.add_argument("--advance", type=int, default=1, help="chunks run before timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops-steps", type=int, default=500, help="scan length of the ops table")
    args = parser.parse_args()
    base = dqn.DQNConfig(width=args.width, controller=args.controller, prune_every=args.prune_every)
    per = args.prune_every * base.train_every
    config = base._replace(total_env_steps=base.learning_starts + args.total_intervals * per)
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    print(f"jax {jax.__version__}, {jax.default_backend()}, {args.seeds} seeds vmapped", flush=True)
    print("patched modules:", [m.__name__ for m in modules_using_replay()])
    states, runs = {}, {}
    for name, buffer in VARIANTS.items():
        states[name], runs[name] = build(config, buffer, keys, args.intervals)
        print(f"compiled {name}", flush=True)
    check_buffers(states)
    print(
        f"\nthe buffers alone: {args.ops_steps} x (add {config.num_envs}, sample "
        f"{config.batch_size}) in a vmapped scan, medians of {args.rounds} interleaved rounds"
    )
    print(ops_table(states, config, keys, args.ops_steps, args.rounds), flush=True)
    for name, run in runs.items():
        for _ in range(args.advance):
            states[name], metrics = run(states[name])
        loss = np.asarray(metrics.loss)
        print(f"{name}: finite metrics after advancing: {bool(np.all(np.isfinite(loss)))}")
    fns = {name: lambda run=run, s=states[name]: run(s) for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ratios = []
    for rep in range(args.repeats):
        med = interleaved_medians(fns, rounds=args.rounds, warmup=1)
        for name in VARIANTS:
            times[name].append(med[name])
        ours, theirs = (med[name] for name in VARIANTS)
        ratios.append(theirs / ours)
        print(f"repeat {rep}: {ours * 1e3:.1f} ms vs {theirs * 1e3:.1f} ms, {ratios[-1]:.3f}x")
    env_steps = args.intervals * per * args.seeds
    rows = [
        [name, f"{np.median(ts) * 1e3:.1f}", f"{env_steps / np.median(ts):.0f}"]
        for name, ts in times.items()
    ]
    print(
        f"\nBreakout-MinAtar DQN ({args.controller}), chunk of {args.intervals} x "
        f"{args.prune_every} updates, {args.seeds} seeds; medians of {args.repeats} x "
        f"{args.rounds} interleaved rounds"
    )
    print(markdown_table(["buffer", "ms per chunk", "env steps/s"], rows))
    print(f"flashbax / hand-written time: {np.median(ratios):.3f}x (per repeat: "
          + ", ".join(f"{r:.3f}" for r in ratios) + "; target <= 1.05x)")  # fmt: skip


if __name__ == "__main__":
    main()
