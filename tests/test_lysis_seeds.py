"""Lysis of seeds trained as one vmapped program: units aligned to a common width (issue 19)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from depgraph_models import SmallMLP

import emrakul
from emrakul.export import dependency_graph, group_pruning
from emrakul.export.lysis_seeds import lyse_seeds


def _steps(apply, groups, tx, x, y):
    def loss(p, s):
        logits = apply({"params": groups.tied(p, s)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(p, s):
        g = jax.grad(loss)(p, s)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return jax.jit(jax.vmap(step))


def test_seeds_lyse_different_units_to_one_width_and_train_on_identically():
    model, x = SmallMLP(), jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.arange(8) % 3
    inits = [model.init(jax.random.key(s), x)["params"] for s in range(2)]
    groups = group_pruning(
        dependency_graph(model.apply, {"params": inits[0]}, x), {"params": inits[0]}
    )
    tx = emrakul.wrap(
        optax.adam(1e-2),
        emrakul.controllers.gmp(start=0.0, end=0.25),
        total_steps=120,
        sparsity=0.5,
        every=5,
        filter=groups.filter,
        structure=groups.structure,
    )
    params = jax.tree.map(lambda *a: jnp.stack(a), *inits)
    state = jax.vmap(tx.init)(params)
    step = _steps(model.apply, groups, tx, x, y)
    for _ in range(40):
        params, state = step(params, state)
    life = emrakul.wrapper.state.find_state(state).life.state
    dead = [
        np.flatnonzero((np.asarray(life["Dense_0"]["kernel"][s]) != 0).all(0)) for s in range(2)
    ]
    assert not np.array_equal(dead[0], dead[1])  # the seeds lysed different units
    out = lyse_seeds(model.apply, {"params": params}, state, groups, x, multiple_of=4)
    assert out.removed == {
        "['params']['Dense_0']['kernel']:1": 8,
        "['params']['Dense_1']['kernel']:1": 8,
    }
    assert out.variables["params"]["Dense_0"]["kernel"].shape == (2, 5, 8)
    tied = jax.vmap(groups.tied)(params, state)
    small_tied = jax.vmap(out.groups.tied)(out.variables["params"], out.opt_state)
    want = jax.vmap(lambda p: model.apply({"params": p}, x))(tied)
    got = jax.vmap(lambda p: out.apply({"params": p}, x))(small_tied)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    small_step = _steps(out.apply, out.groups, tx, x, y)
    small_params, small_state = out.variables["params"], out.opt_state
    for _ in range(30):  # both go on training: the permuted compact runs follow the masked ones
        params, state = step(params, state)
        small_params, small_state = small_step(small_params, small_state)
    want = jax.vmap(lambda p, s: model.apply({"params": groups.tied(p, s)}, x))(params, state)
    got = jax.vmap(lambda p, s: out.apply({"params": out.groups.tied(p, s)}, x))(
        small_params, small_state
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
