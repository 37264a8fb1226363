"""The dependency graph and lysis of any JAX model (issue 19): groups, compaction, equality."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from depgraph_models import (
    cnn_host,
    eqx_cnn,
    kill_units,
    mixed,
    nnx_mlp,
    reshape_attention,
    resnet,
    transformer,
)

from emrakul.export import cut, dependency_graph, lyse

MODELS = {
    "resnet": resnet,
    "transformer": transformer,
    "nnx_mlp": nnx_mlp,
    "eqx_cnn": eqx_cnn,
    "mixed": mixed,
    "reshape_attention": reshape_attention,
    "cnn_host": cnn_host,
}


def _members(graph, name):
    group = next(g for g in graph.groups if g.name == name)
    return {(m.path, m.axis, m.consumer) for m in group.members}


def test_resnet_groups_follow_the_residual_stream_and_batchnorm():
    apply, v, x = resnet()
    graph = dependency_graph(apply, v, x)
    assert len(graph.groups) == 4
    # stage 1's stream: the stem, its BatchNorm and the identity block's second conv add up
    stream = _members(graph, "['params']['Conv_0']['kernel']:3")
    p = "['params']"
    assert (f"{p}['_Block_1']['Conv_1']['kernel']", 3, False) in stream
    assert (f"{p}['_Block_1']['BatchNorm_1']['scale']", 0, False) in stream
    assert (f"{p}['_Block_0']['Conv_2']['kernel']", 2, True) in stream  # the projection reads it
    assert ("['batch_stats']['BatchNorm_0']['mean']", 0, False) in stream
    # stage 2's stream ends in the head's input rows (global average pooling keeps channels)
    stage2 = _members(graph, f"{p}['_Block_0']['Conv_1']['kernel']:3")
    assert (f"{p}['Dense_0']['kernel']", 0, True) in stage2
    assert (f"{p}['_Block_0']['Conv_2']['kernel']", 3, False) in stage2
    reasons = {r for it in graph.intact for r in it.reasons}
    assert "a convolution's window" in reasons and "a model output" in reasons


def test_transformer_groups_heads_head_dims_residual_and_mlp():
    apply, v, ids = transformer()
    graph = dependency_graph(apply, v, ids)
    sizes = sorted(g.units for g in graph.groups)
    assert sizes == [4, 8, 8, 32, 64]  # heads, q-k dims, v dims, residual stream, MLP hidden
    heads = next(g for g in graph.groups if g.units == 4)
    attn = "['params']['MultiHeadDotProductAttention_0']"
    assert (f"{attn}['out']['kernel']", 0, True) in {
        (m.path, m.axis, m.consumer) for m in heads.members
    }
    stream = next(g for g in graph.groups if g.units == 32)
    assert "reduce_sum" in stream.reduced  # LayerNorm's mean over the stream
    assert len(stream.members) == 16


def test_groupnorm_grouped_convs_and_concatenation_offsets():
    apply, v, x = mixed()
    graph = dependency_graph(apply, v, x)
    units = {
        g.name: (g.units, {m.path: m.positions.shape[1] for m in g.members}) for g in graph.groups
    }
    p = "['params']"
    # GroupNorm keeps its 4 groups equal: a unit is a group of 2 channels (scale, bias, rows)
    n, k = units[f"{p}['Conv_0']['kernel']:3"]
    assert n == 4 and k[f"{p}['GroupNorm_0']['scale']"] == 2 and k[f"{p}['Dense_0']['kernel']"] == 2
    # the grouped conv keeps its 3 groups: input position j of every group is one unit
    n, k = units[f"{p}['Conv_1']['kernel']:3"]
    assert n == 2 and k[f"{p}['Conv_1']['kernel']"] == 3
    n, k = units[f"{p}['Conv_2']['kernel']:3"]
    assert n == 2 and k[f"{p}['Dense_0']['kernel']"] == 3  # rows 8 + m, 10 + m, 12 + m
    dense_rows = next(
        m for m in graph.groups[0].members if m.path.endswith("['Dense_0']['kernel']")
    )
    assert dense_rows.positions.max() < 8  # the concatenation's offsets: a's rows come first
    # a depthwise conv's channel goes with its input channel (the replay lowers the group count)
    n, k = units[f"{p}['Conv_3']['kernel']:3"]
    assert n == 4 and k[f"{p}['Conv_4']['kernel']"] == 1 and k[f"{p}['Dense_0']['kernel']"] == 4


def test_reshaped_heads_are_units():
    apply, v, x = reshape_attention()
    graph = dependency_graph(apply, v, x)
    q = next(g for g in graph.groups if g.name == "['params']['Dense_0']['kernel']:1")
    assert q.units == 2  # two heads of 4 columns
    assert {m.path for m in q.members} >= {"['params']['Dense_1']['kernel']"}  # k shares heads


def test_flattened_conv_map_couples_each_channel_with_its_rows():
    apply, params, x = eqx_cnn()
    graph = dependency_graph(apply, params, x)
    c2 = next(g for g in graph.groups if g.units == 6)
    head = next(m for m in c2.members if m.path == ".head.weight")
    # channel-first flattening: channel c owns rows c*36 ... c*36+35
    np.testing.assert_array_equal(head.positions, np.arange(216).reshape(6, 36))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lysis_removes_every_dead_unit_and_keeps_the_outputs(name):
    apply, v, x = MODELS[name]()
    graph = dependency_graph(apply, v, x)
    has_params = isinstance(v, dict) and "params" in v
    checked = (lambda p: p.startswith("['params']")) if has_params else (lambda p: True)
    dead, killed = kill_units(graph, v, checked)
    out = lyse(apply, dead, x)
    assert out.intact == {}
    assert out.removed == killed
    before = sum(np.size(a) for a in jax.tree.leaves(v))
    assert sum(np.size(a) for a in jax.tree.leaves(out.variables)) < before
    x2 = jax.tree.map(lambda a: jnp.roll(a, 1, axis=0), x)  # other inputs than the check's
    np.testing.assert_allclose(out.apply(out.variables, x2), apply(dead, x2), atol=2e-5, rtol=1e-5)
    batched = jax.jit(jax.vmap(lambda xi: out.apply(out.variables, xi[None])[0]))(x2)
    np.testing.assert_allclose(batched, apply(dead, x2), atol=2e-5, rtol=1e-5)


def _mlp_apply(p, x):
    h = jax.nn.relu(x @ p["w1"] + p["b1"])
    return jax.nn.tanh(h @ p["w2"] + p["b2"]) @ p["w3"]


def test_plain_function_compaction_matches_a_numpy_reference():
    rng = np.random.default_rng(3)
    p = {
        "w1": rng.normal(size=(6, 10)),
        "b1": rng.normal(size=10),
        "w2": rng.normal(size=(10, 7)),
        "b2": rng.normal(size=7),
        "w3": rng.normal(size=(7, 3)),
    }
    p = {k: a.astype(np.float32) for k, a in p.items()}
    dead1, dead2 = [1, 4, 9], [0, 5]
    p["w1"][:, dead1], p["b1"][dead1] = 0, 0
    p["w2"][:, dead2], p["b2"][dead2] = 0, 0
    x = rng.normal(size=(4, 6)).astype(np.float32)
    out = lyse(_mlp_apply, p, x)
    want = {
        "w1": np.delete(p["w1"], dead1, 1),
        "b1": np.delete(p["b1"], dead1),
        "w2": np.delete(np.delete(p["w2"], dead1, 0), dead2, 1),
        "b2": np.delete(p["b2"], dead2),
        "w3": np.delete(p["w3"], dead2, 0),
    }
    for k in want:
        np.testing.assert_array_equal(out.variables[k], want[k])
    np.testing.assert_allclose(_mlp_apply(want, x), _mlp_apply(p, x), rtol=1e-5, atol=1e-6)


def test_adam_state_and_masks_are_cut_like_the_params():
    apply, v, x = transformer()
    graph = dependency_graph(apply, v, x)
    dead, _ = kill_units(graph, v, lambda p: p.startswith("['params']"))
    opt_state = optax.adam(1e-3).init(dead["params"])
    masks = jax.tree.map(lambda a: np.asarray(a) != 0, dead["params"])
    out = lyse(apply, dead, x, opt_state=opt_state, masks=masks)
    shapes = jax.tree.map(np.shape, out.variables["params"])
    assert jax.tree.map(np.shape, out.opt_state[0].mu) == shapes
    assert jax.tree.map(np.shape, out.opt_state[0].nu) == shapes
    assert jax.tree.map(np.shape, out.masks) == shapes
    assert out.opt_state[0].count == opt_state[0].count


def test_training_after_lysis_follows_the_masked_run():
    apply, state, x = nnx_mlp()
    graph = dependency_graph(apply, state, x)
    dead, _ = kill_units(graph, state, lambda p: True)
    mask = jax.tree.map(lambda a: (np.asarray(a) != 0).astype(np.float32), dead)
    y = jnp.sin(jnp.arange(20.0)).reshape(4, 5)
    opt = optax.adam(1e-2)

    def train(fn, params, opt_state, masked):
        def loss(q):
            q = jax.tree.map(jnp.multiply, q, mask) if masked else q
            return jnp.mean((fn(q, x) - y) ** 2)

        @jax.jit
        def step(q, s):
            g = jax.grad(loss)(q)
            u, s = opt.update(g, s, q)
            return optax.apply_updates(q, u), s

        for _ in range(100):
            params, opt_state = step(params, opt_state)
        return params

    lysed = lyse(apply, dead, x, opt_state=opt.init(dead))
    masked = train(apply, dead, opt.init(dead), True)
    compact = train(lysed.apply, lysed.variables, lysed.opt_state, False)
    masked_cut = cut(jax.tree.map(jnp.multiply, masked, mask), lysed.plan)
    for a, b in zip(jax.tree.leaves(masked_cut), jax.tree.leaves(compact), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class _Sorted(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.sort(nn.Dense(8)(x), axis=-1)
        return nn.Dense(2)(nn.Dense(6)(h) * jnp.arange(1.0, 7.0))


def test_what_the_graph_cannot_see_through_stays_intact_and_is_named():
    x = jnp.ones((2, 4))
    v = _Sorted().init(jax.random.key(0), x)
    graph = dependency_graph(_Sorted().apply, v, x)
    assert graph.groups == ()
    reasons = {r for it in graph.intact for r in it.reasons}
    assert "an operation the graph cannot see through (sort)" in reasons
    assert any("constant of fixed size" in r for r in reasons)  # the arange constant
    assert "sort" in graph.report()


def test_a_leaf_that_is_not_an_array_is_named():
    with pytest.raises(ValueError, match=r"\['scale'\] is str"):
        dependency_graph(lambda p, x: x * 2, {"scale": "two"}, jnp.ones(3))


def test_a_group_whose_removal_changes_the_outputs_stays_and_says_why():
    def apply(p, x):  # a dead unit still sends sigmoid(0) = 0.5 on
        return jax.nn.sigmoid(x @ p["w1"] + p["b1"]) @ p["w2"]

    rng = np.random.default_rng(0)
    p = {"w1": rng.normal(size=(4, 6)), "b1": rng.normal(size=6), "w2": rng.normal(size=(6, 2))}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    p["w1"][:, 2], p["b1"][2] = 0, 0
    out = lyse(apply, p, np.ones((3, 4), np.float32))
    assert out.removed == {} and out.plan == {}
    (why,) = out.intact.values()
    assert "outputs change by up to" in why
    assert out.variables["w1"].shape == (4, 6)
