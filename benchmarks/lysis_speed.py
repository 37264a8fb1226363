"""Training after lysis: the compacted train step against the masked one, and their memory.

Run: ``python -m benchmarks.lysis_speed [--rounds 20] [--repeats 3]``

Two models, batch 256, with a fraction of the units of every dependency group dead (every
producing slice zero: kernel columns, biases, BatchNorm scales and shifts), at 50% and 75%:

* the MLP ``784-1024-1024-10`` (a plain Dense/ReLU stack in Linen);
* a ResNet-style CNN on 16x16x3 inputs (stem 32 channels, a basic block at 32 and one at 64
  with a projection shortcut, BatchNorm in inference form, global average pooling);
* a transformer block (embedding, LayerNorm, 8-head self-attention, MLP 512, d 128) on
  16-token sequences (the residual stream, heads, head dimensions and MLP units all lose units).

Candidates, one jitted Adam train step each (forward, backward, update), timed interleaved
(medians of ``--rounds`` rounds, ``--repeats`` times; ``benchmarks._timing``):

* ``masked``: the dense model with the masks multiplied into the params in the forward pass
  (the cheapest masked step: the wrapper's own step costs more, ``benchmarks.step_overhead``);
* ``lysed``: :func:`emrakul.export.lyse`'s compact params, Adam state and apply function.

The table gives both step times, the speed-up (goals: 1.7x at 50% and 3x at 75% on the CPU), the
same for the jitted forward pass alone (inference, batch 256: the masked model multiplies its
masks in, as during training) and the bytes of params plus Adam state. The lysed step's loss is
checked against the masked one.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._timing import interleaved_medians, markdown_table
from emrakul import export


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(1024)(x))
        x = nn.relu(nn.Dense(1024)(x))
        return nn.Dense(10)(x)


class _Transformer(nn.Module):
    """A pre-LayerNorm transformer block (d 128, 8 heads, MLP 512) on 16-token sequences."""

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        x = nn.Embed(256, 128)(ids)
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=8, qkv_features=128)(h, h)
        h = nn.Dense(128)(nn.gelu(nn.Dense(512)(nn.LayerNorm()(x))))
        return nn.Dense(10)(nn.LayerNorm()(x + h).mean(axis=1))


class _Block(nn.Module):
    channels: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def bn(h: jax.Array) -> jax.Array:
            return nn.BatchNorm(use_running_average=True)(h)

        h = nn.relu(bn(nn.Conv(self.channels, (3, 3), self.stride, use_bias=False)(x)))
        h = bn(nn.Conv(self.channels, (3, 3), use_bias=False)(h))
        if x.shape[-1] != self.channels or self.stride != 1:
            x = bn(nn.Conv(self.channels, (1, 1), self.stride, use_bias=False)(x))
        return nn.relu(h + x)


class _ResNet(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(32, (3, 3))(x)))
        x = _Block(64, 2)(_Block(32)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def _kill(graph: export.DependencyGraph, variables: dict, fraction: float, seed: int) -> dict:
    """Zeroes the producing ``params`` slices of ``fraction`` of every group's units."""
    rng = np.random.default_rng(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    leaves = {jax.tree_util.keystr(p): np.array(x) for p, x in flat}
    for g in graph.groups:
        units = rng.permutation(g.units)[: round(fraction * g.units)]
        for m in g.members:
            if not m.consumer and m.path.startswith("['params']"):
                np.moveaxis(leaves[m.path], m.axis, 0)[m.positions[units].ravel()] = 0
    return treedef.unflatten([jnp.asarray(leaves[jax.tree_util.keystr(p)]) for p, _ in flat])


def _step(apply, opt, mask=None):
    """A jitted Adam step on ``params`` (other collections fixed); masks multiplied if given."""

    def loss(params, rest, x, y):
        if mask is not None:
            params = jax.tree.map(jnp.multiply, params, mask)
        logits = apply({"params": params, **rest}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, rest, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, rest, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def _bytes(tree) -> int:
    return sum(np.size(a) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def _case(name, model, x, fraction, rounds, repeats) -> list:
    variables = model.init(jax.random.key(0), x[:2])
    variables = jax.tree.map(lambda a: a + 0.05, variables)  # non-zero BatchNorm statistics
    graph = export.dependency_graph(model.apply, variables, x[:2])
    dead = _kill(graph, variables, fraction, seed=1)
    opt = optax.adam(1e-3)
    lysed = export.lyse(model.apply, dead, x[:2], opt_state=opt.init(dead["params"]))
    mask = jax.tree.map(lambda a: (a != 0).astype(a.dtype), dead["params"])
    y = jnp.arange(len(x)) % 10
    rest = {k: v for k, v in dead.items() if k != "params"}
    small_rest = {k: v for k, v in lysed.variables.items() if k != "params"}
    masked, compact = _step(model.apply, opt, mask), _step(lysed.apply, opt)
    m_state, c_state = opt.init(dead["params"]), lysed.opt_state
    want = masked(dead["params"], rest, m_state, x, y)[2]
    got = compact(lysed.variables["params"], small_rest, c_state, x, y)[2]
    assert abs(float(want) - float(got)) < 1e-4 * max(1.0, abs(float(want))), (want, got)
    fwd_masked = jax.jit(
        lambda p, r, x: model.apply({"params": jax.tree.map(jnp.multiply, p, mask), **r}, x)
    )
    fwd_lysed = jax.jit(lysed.apply)
    fns = {
        "masked": lambda: masked(dead["params"], rest, m_state, x, y),
        "lysed": lambda: compact(lysed.variables["params"], small_rest, c_state, x, y),
        "masked_fwd": lambda: fwd_masked(dead["params"], rest, x),
        "lysed_fwd": lambda: fwd_lysed(lysed.variables, x),
    }
    meds = [interleaved_medians(fns, rounds=rounds, warmup=2) for _ in range(repeats)]
    ms = {k: float(np.median([m[k] for m in meds])) * 1e3 for k in fns}
    mem_masked = _bytes(dead["params"]) + _bytes(m_state)
    mem_lysed = _bytes(lysed.variables["params"]) + _bytes(c_state)
    print(f"{name} {fraction:.0%} done", flush=True)
    return [
        name,
        f"{fraction:.0%}",
        f"{ms['masked']:.2f}",
        f"{ms['lysed']:.2f}",
        f"{ms['masked'] / ms['lysed']:.2f}x",
        " / ".join(f"{m['masked'] / m['lysed']:.2f}" for m in meds),
        f"{ms['masked_fwd']:.2f}",
        f"{ms['lysed_fwd']:.2f}",
        f"{ms['masked_fwd'] / ms['lysed_fwd']:.2f}x",
        f"{mem_masked / 2**20:.2f} -> {mem_lysed / 2**20:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fractions", default="0.5,0.75")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mlp_x = jnp.asarray(rng.normal(size=(256, 784)), jnp.float32)
    cnn_x = jnp.asarray(rng.normal(size=(256, 16, 16, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 256, size=(256, 16)), jnp.int32)
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        rows.append(
            _case("MLP 784-1024-1024-10", _MLP(), mlp_x, fraction, args.rounds, args.repeats)
        )
        rows.append(
            _case("ResNet CNN 32/64", _ResNet(), cnn_x, fraction, args.rounds, args.repeats)
        )
        rows.append(
            _case("transformer block", _Transformer(), ids, fraction, args.rounds, args.repeats)
        )
    header = [
        "model",
        "units removed",
        "masked step ms",
        "lysed step ms",
        "speed-up",
        "per repeat",
        "masked fwd ms",
        "lysed fwd ms",
        "fwd speed-up",
        "params + Adam MiB",
    ]
    print(f"\nAdam train step, batch 256, medians of {args.repeats} x {args.rounds} rounds")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
