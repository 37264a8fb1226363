"""Models of four kinds for the dependency-graph tests, and a helper that kills units."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from emrakul.export import DependencyGraph


class _Block(nn.Module):
    """A ResNet basic block (He et al. 2016) with a projection shortcut when the shape changes."""

    channels: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bn = lambda: nn.BatchNorm(use_running_average=True)
        h = nn.Conv(self.channels, (3, 3), strides=self.stride, use_bias=False)(x)
        h = nn.relu(bn()(h))
        h = bn()(nn.Conv(self.channels, (3, 3), use_bias=False)(h))
        if x.shape[-1] != self.channels or self.stride != 1:
            x = bn()(nn.Conv(self.channels, (1, 1), strides=self.stride, use_bias=False)(x))
        return nn.relu(h + x)


class ResNet(nn.Module):
    """Stem, two residual stages (8 and 16 channels), global average pooling, a Dense head."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(8, (3, 3))(x)))
        x = _Block(16, 2)(_Block(8)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class Transformer(nn.Module):
    """One pre-LayerNorm transformer block between an embedding and a vocabulary head."""

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        x = nn.Embed(50, 32)(ids)
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)(h, h)
        h = nn.Dense(32)(nn.gelu(nn.Dense(64)(nn.LayerNorm()(x))))
        return nn.Dense(50)(nn.LayerNorm()(x + h))


class Mixed(nn.Module):
    """GroupNorm, a grouped and a depthwise convolution, pooling and a concatenation."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(8, (3, 3))(x)))  # 4 groups of 2
        b = nn.relu(nn.Conv(6, (1, 1))(x))
        b = nn.relu(nn.Conv(6, (3, 3), feature_group_count=3)(b))  # 3 groups of 2 in, 2 out
        c = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        c = nn.avg_pool(nn.Conv(4, (3, 3), feature_group_count=4)(c), (2, 2), (2, 2))
        h = jnp.concatenate([a.mean(axis=(1, 2)), b.mean(axis=(1, 2)), c.reshape(len(c), -1)], -1)
        return nn.Dense(5)(h)


class ReshapeAttention(nn.Module):
    """Self-attention with heads made by reshaping Dense outputs (``[B, T, 8] -> [B, T, 2, 4]``)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        q, k, v = (nn.Dense(8)(x).reshape(b, t, 2, 4) for _ in range(3))
        w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / 2.0, axis=-1)
        out = jnp.einsum("bhts,bshd->bthd", w, v).reshape(b, t, 8)
        return nn.Dense(3)(nn.Dense(8)(out).mean(axis=1))


class SmallMLP(nn.Module):
    """Two ReLU Dense layers of ``width`` units and a Dense head (the group-pruning tests)."""

    width: int = 16
    classes: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.width)(x))
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.classes)(x)


class NnxMLP(nnx.Module):
    """Linear, LayerNorm, ReLU, Linear (Flax NNX)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(12, 32, rngs=rngs)
        self.norm = nnx.LayerNorm(32, rngs=rngs)
        self.l2 = nnx.Linear(32, 5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(nnx.relu(self.norm(self.l1(x))))


class EqxCNN(eqx.Module):
    """Two channel-first convolutions and a Linear head on the flattened map (Equinox)."""

    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2, k3 = jax.random.split(key, 3)
        self.c1 = eqx.nn.Conv2d(2, 8, 3, key=k1)
        self.c2 = eqx.nn.Conv2d(8, 6, 3, padding=1, key=k2)
        self.head = eqx.nn.Linear(6 * 6 * 6, 4, key=k3)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.c2(jax.nn.relu(self.c1(x))))
        return self.head(h.reshape(-1))


def _perturbed(model: nn.Module, x, noise) -> tuple:
    """``(apply, variables, x)`` with every leaf moved by ``noise(key, shape)`` (non-zero
    biases and normalisation statistics)."""
    v = model.init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: a + noise(jax.random.key(a.size), a.shape), v)
    return model.apply, v, x


def resnet() -> tuple:
    """``(apply, variables, example input)`` with random BatchNorm statistics."""
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    return _perturbed(ResNet(), x, lambda k, s: 0.3 * jax.random.uniform(k, s))


def transformer() -> tuple:
    ids = jax.random.randint(jax.random.key(1), (2, 5), 0, 50)
    return _perturbed(Transformer(), ids, lambda k, s: 0.1 * jax.random.normal(k, s))


def mixed() -> tuple:
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    return _perturbed(Mixed(), x, lambda k, s: 0.1 * jax.random.normal(k, s))


def reshape_attention() -> tuple:
    x = jax.random.normal(jax.random.key(1), (2, 5, 6))
    v = ReshapeAttention().init(jax.random.key(0), x)
    return ReshapeAttention().apply, v, x


def cnn_host() -> tuple:
    """The lab's CNN1D host: im2col convolutions (kernels reshaped against shifted slices)."""
    from emrakul.lab import hosts

    model = hosts.make_host("cnn", (16, 32))
    x = jax.random.normal(jax.random.key(2), (3, 40))
    v = model.init(jax.random.key(0), x)
    return model.apply, v, x


def nnx_mlp() -> tuple:
    graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0)))
    state = jax.tree.map(lambda a: a + 0.1, state)
    return (lambda s, x: nnx.merge(graphdef, s)(x)), state, jnp.ones((4, 12)) * 0.3


def eqx_cnn() -> tuple:
    params, static = eqx.partition(EqxCNN(jax.random.key(0)), eqx.is_array)
    x = jax.random.normal(jax.random.key(1), (3, 2, 8, 8))
    return (lambda p, xs: jax.vmap(eqx.combine(p, static))(xs)), params, x


def kill_units(graph: DependencyGraph, variables, checked, seed: int = 0) -> tuple:
    """Zeroes every checked producing slice of about a third of each group's units.

    Returns:
      ``(variables, group name -> killed count)``.
    """
    rng = np.random.default_rng(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    leaves = {jax.tree_util.keystr(p): np.array(x) for p, x in flat}
    killed = {}
    for g in graph.groups:
        units = rng.choice(g.units, max(1, g.units // 3), replace=False)
        for m in g.members:
            if m.consumer or not checked(m.path):
                continue
            moved = np.moveaxis(leaves[m.path], m.axis, 0)
            moved[m.positions[units].ravel()] = 0
        killed[g.name] = len(units)
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    return treedef.unflatten([jnp.asarray(leaves[p]) for p in paths]), killed
