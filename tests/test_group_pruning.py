"""Group pruning through emrakul.wrap and lysis while training (issue 19, items 2 and 4)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from depgraph_models import SmallMLP, resnet

import emrakul
from emrakul.export import cut, dependency_graph, group_pruning, lyse, lyse_training
from emrakul.surgery import lifecycle
from emrakul.wrapper.state import find_state


def _stepper(apply, rest, tx, groups, x, y):
    def loss(p, s):
        logits = apply({"params": groups.tied(p, s), **rest}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p, s)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return step


def _train(apply, rest, tx, groups, params, state, x, y, steps, step=None):
    step = step or _stepper(apply, rest, tx, groups, x, y)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def test_gmp_prunes_whole_groups_that_lysis_then_removes():
    apply, v, x = resnet()
    graph = dependency_graph(apply, v, x)
    groups = group_pruning(graph, v)
    assert len(groups.leaders) == len(graph.groups) == 4 and groups.skipped == {}
    tx = _gmp(groups, 1e-2, 0.0, 0.5, total=20, sparsity=0.5, every=5)
    rest = {"batch_stats": v["batch_stats"]}
    y = jnp.arange(3) % 10
    params, state = _train(apply, rest, tx, groups, v["params"], tx.init(v["params"]), x, y, 20)
    tied = {"params": groups.tied(params, state), **rest}
    out = lyse(apply, tied, x, opt_state=state)
    assert out.removed == {g.name: g.units // 2 for g in graph.groups}
    np.testing.assert_allclose(out.apply(out.variables, x), apply(tied, x), rtol=1e-5, atol=1e-5)
    life = jax.tree_util.tree_flatten_with_path(find_state(out.opt_state).life.state)[0]
    small = jax.tree_util.tree_flatten_with_path(out.variables["params"])[0]
    for (path, s), (_, p) in zip(life, small, strict=True):
        lead = jax.tree_util.keystr(path) in groups.leaders
        assert np.shape(s) == (np.shape(p) if lead else ())


def _gmp(groups, lr, start, end, total, sparsity, every):
    return emrakul.wrap(
        optax.adam(lr),
        emrakul.controllers.gmp(start=start, end=end),
        total_steps=total,
        sparsity=sparsity,
        every=every,
        filter=groups.filter,
        structure=groups.structure,
    )


def test_training_goes_on_after_lysis_as_the_masked_run_does():
    model, x = SmallMLP(), jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.arange(8) % 3
    v = model.init(jax.random.key(0), x)
    groups = group_pruning(dependency_graph(model.apply, v, x), v)
    tx = _gmp(groups, 1e-2, 0.0, 0.25, total=120, sparsity=0.5, every=5)
    params, state = _train(model.apply, {}, tx, groups, v["params"], tx.init(v["params"]), x, y, 40)
    out = lyse_training(model.apply, {"params": params}, state, groups, x, multiple_of=4)
    assert out.removed == {
        "['params']['Dense_0']['kernel']:1": 8,
        "['params']['Dense_1']['kernel']:1": 8,
    }
    assert out.groups.leaders == groups.leaders
    knobs = find_state(out.opt_state).knobs
    units = [v["params"][f"Dense_{i}"]["kernel"].shape[1] for i in range(2)]
    np.testing.assert_allclose(knobs.target, [0.5, 0.5])  # the original layers' targets
    np.testing.assert_allclose(knobs.lysed, [8 / c for c in units], rtol=1e-6)
    np.testing.assert_allclose(knobs.kept, [1 - 8 / c for c in units], rtol=1e-6)
    masked = _train(model.apply, {}, tx, groups, params, state, x, y, 80)
    small = _train(out.apply, {}, tx, out.groups, out.variables["params"], out.opt_state, x, y, 80)
    want = cut({"params": groups.tied(*masked)}, out.plan)["params"]
    got = out.groups.tied(*small)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    again = lyse_training(out.apply, out.variables, out.opt_state, out.groups, x, multiple_of=4)
    assert again.plan == {}  # nothing further lysed: no recompilation
    with pytest.raises(ValueError, match="multiple_of"):
        lyse_training(out.apply, out.variables, out.opt_state, out.groups, x, multiple_of=0)
    with pytest.raises(ValueError, match="collection 'params'"):
        group_pruning(dependency_graph(model.apply, v, x), v["params"])


def _pruned_units(opt_state, removed: dict) -> list[int]:
    """Each leader's units that are not alive or were removed by lysis."""
    life = [s for s in jax.tree.leaves(find_state(opt_state).life.state) if np.ndim(s) > 0]
    gone = [removed.get(i, 0) for i in range(len(life))]
    return [int((np.asarray(s) != lifecycle.ALIVE).all(axis=0).sum()) + g
            for s, g in zip(life, gone, strict=True)]  # fmt: skip


def test_lysis_during_the_ramp_prunes_as_many_units_as_the_masked_run():
    # Exact equality of the weights holds only after the ramp (the test above): during it, a
    # layer whose input units were removed ranks its own units without those inputs' rows,
    # which the masked run still counts. The number of pruned units is the masked run's.
    model, x = SmallMLP(64, 10), jax.random.normal(jax.random.key(1), (16, 20))
    y = jnp.arange(16) % 10
    v = model.init(jax.random.key(0), x)
    groups = group_pruning(dependency_graph(model.apply, v, x), v)
    tx = _gmp(groups, 1e-3, 0.1, 0.5, total=100, sparsity=0.75, every=10)
    masked = (v["params"], tx.init(v["params"]))
    apply, (params, state), small_groups, removed = model.apply, masked, groups, {}
    lyses, step = 0, _stepper(model.apply, {}, tx, groups, x, y)
    small_step = step
    for _ in range(10):
        masked = _train(model.apply, {}, tx, groups, *masked, x, y, 10, step)
        params, state = _train(apply, {}, tx, small_groups, params, state, x, y, 10, small_step)
        assert _pruned_units(state, removed) == _pruned_units(masked[1], {})
        out = lyse_training(apply, {"params": params}, state, small_groups, x, multiple_of=8)
        if out.plan:
            apply, params, state = out.apply, out.variables["params"], out.opt_state
            small_groups, lyses = out.groups, lyses + 1
            small_step = _stepper(apply, {}, tx, small_groups, x, y)
            for k, path in enumerate(sorted(out.removed)):
                removed[k] = removed.get(k, 0) + out.removed[path]
    assert lyses >= 2  # lysed during the ramp, more than once
    np.testing.assert_allclose(find_state(state).knobs.target, [0.75, 0.75])
    assert [params[f"Dense_{i}"]["kernel"].shape[1] for i in range(2)] == [16, 16]


@pytest.mark.slow  # ~15 s: the Magistrate's step compiles slowly
def test_the_learned_controller_prunes_groups_too():
    model, x = SmallMLP(64, 10), jax.random.normal(jax.random.key(1), (32, 20))
    v = model.init(jax.random.key(0), x)
    groups = group_pruning(dependency_graph(model.apply, v, x), v)
    tx = emrakul.wrap(
        optax.adam(1e-3),
        emrakul.controllers.magistrate(),
        total_steps=100,
        sparsity=0.75,
        every=10,
        filter=groups.filter,
        structure=groups.structure,
    )
    y = jnp.arange(32) % 10
    params, state = _train(
        model.apply, {}, tx, groups, v["params"], tx.init(v["params"]), x, y, 100
    )
    tied = {"params": groups.tied(params, state)}
    out = lyse(model.apply, tied, x, opt_state=state)
    dead = np.round(np.asarray(emrakul.layer_sparsity(state)) * 64).astype(int)
    assert dead.sum() > 0
    assert sorted(out.removed.values()) == sorted(dead.tolist())
    np.testing.assert_allclose(out.apply(out.variables, x), model.apply(tied, x), atol=1e-5)


class _Residual(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16, name="into")(x)
        h = h + nn.Dense(16, name="add")(nn.relu(nn.Dense(16, name="hidden")(h)))
        return nn.Dense(3, name="head")(h)


def test_group_magnitude_ranks_a_unit_by_all_its_producers():
    model, x = _Residual(), jax.random.normal(jax.random.key(1), (4, 16))
    v = model.init(jax.random.key(0), x)
    p = jax.tree.map(np.array, v["params"])
    groups = group_pruning(dependency_graph(model.apply, v, x), v)
    lead = "into" if "['into']['kernel']" in groups.leaders else "add"
    other = {"into": "add", "add": "into"}[lead]  # both write the residual stream
    p[lead]["kernel"][:, 5] = 1e-4  # the leader's column of unit 5 is tiny...
    p[other]["kernel"][:, 5] = 10.0  # ...but the other producer writes it strongly
    kept = {}
    for name, choose in (("leader", lambda c: c), ("group", groups.group_magnitude)):
        tx = emrakul.wrap(
            optax.sgd(0.0),
            choose(emrakul.controllers.one_shot(at=0.0)),
            total_steps=10,
            sparsity=0.5,
            filter=groups.filter,
            structure=groups.structure,
        )
        state = tx.init(p)
        _, state = tx.update(jax.tree.map(jnp.zeros_like, p), state, p)
        assert float(emrakul.sparsity(state)) == pytest.approx(0.5)
        kept[name] = bool(
            (np.asarray(find_state(state).life.state[lead]["kernel"])[:, 5] == 0).all()
        )
    assert kept == {"leader": False, "group": True}
