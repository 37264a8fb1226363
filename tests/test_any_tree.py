"""emrakul.wrap and the vital signs on any parameter tree (issue 6).

Flax Linen dicts, Flax NNX state (``nnx.split(model, nnx.Param, ...)``) and Equinox trees
(``eqx.partition(model, eqx.is_inexact_array)``) train and prune under jit; path-based regex
filters choose exactly the intended leaves; ``inject_hyperparams``, ``MultiSteps`` and ``chain``
inner optimizers work; unsupported trees fail with a message saying what to pass.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import emrakul
from emrakul import controllers, filters
from emrakul import vitals as vit
from emrakul._tree import path_str
from emrakul.surgery.lifecycle import ALIVE, LYSED, alive_mask

X = jax.random.normal(jax.random.PRNGKey(0), (64, 8))
Y = jax.random.randint(jax.random.PRNGKey(1), (64,), 0, 4)
STEPS, EVERY, SPARSITY = 40, 5, 0.8  # gmp reaches the target at 0.8 * 40 = step 32


# ----------------------------------------------------------------------------- models


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(4, name="head")(x)


def linen_setup():
    net = LinenNet()
    params = net.init(jax.random.PRNGKey(2), X)["params"]
    return params, lambda p, x: net.apply({"params": p}, x)


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 32, rngs=rngs)
        self.norm = nnx.LayerNorm(32, rngs=rngs)
        self.l2 = nnx.Linear(32, 32, rngs=rngs)
        self.head = nnx.Linear(32, 4, rngs=rngs)
        self.drop = nnx.Dropout(0.0, rngs=rngs)  # RngState lands in `rest`, not in the params

    def __call__(self, x):
        x = jax.nn.relu(self.norm(self.l1(x)))
        x = self.drop(jax.nn.relu(self.l2(x)))
        return self.head(x)


def nnx_setup():
    model = NNXNet(nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return model, params, lambda p, x: nnx.merge(graphdef, p, rest)(x), (graphdef, rest)


def eqx_setup():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(8, 4, 32, 2, key=jax.random.PRNGKey(4))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return model, params, lambda p, x: jax.vmap(eqx.combine(p, static))(x)


# ----------------------------------------------------------------------------- helpers


def flat(tree) -> dict[str, jax.Array]:
    """Leaves by path string, whatever the tree type."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def train(tx, forward, params, steps=STEPS, traces=None):
    def loss_fn(p, s):
        logits = forward(emrakul.masked(p, s), X)
        return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()

    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p, s)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    if traces is not None:
        step = chex.assert_max_traces(step, n=traces)
    step = jax.jit(step)
    state = jax.jit(tx.init)(params)
    loss = None
    for _ in range(steps):
        params, state, loss = step(params, state)
    assert np.isfinite(float(loss))
    return params, state, step, loss_fn


def check_pruned(params, state, expected: list[str], sparsity=SPARSITY):
    """The right leaves are pruned, masks have the params' shapes, dead weights are zero."""
    life = flat(state.life.state)
    p = flat(params)
    eff = flat(emrakul.masked(params, state))
    assert sorted(k for k, v in life.items() if np.ndim(v) > 0) == sorted(expected)
    for k in p:
        if k not in expected:
            assert np.ndim(life[k]) == 0  # not pruned: the scalar marker
            np.testing.assert_array_equal(eff[k], p[k])
            continue
        assert life[k].shape == p[k].shape
        dead = np.asarray(life[k]) != ALIVE
        assert abs(dead.mean() - sparsity) <= 1.0 / dead.size + 1e-6, k
        assert (np.asarray(eff[k])[dead] == 0).all()
        np.testing.assert_array_equal(np.asarray(eff[k])[~dead], np.asarray(p[k])[~dead])
        assert (np.asarray(p[k])[np.asarray(life[k]) == LYSED] == 0).all()
    np.testing.assert_allclose(float(emrakul.sparsity(state)), sparsity, atol=1e-2)
    np.testing.assert_allclose(np.asarray(emrakul.layer_sparsity(state)), sparsity, atol=1e-2)


def check_vitals(params, state, loss_fn):
    """The vital signs run under jit on the tree and keep its structure."""
    grads = jax.grad(loss_fn)(params, state)
    masks = alive_mask(state.life.state)
    v = jax.jit(vit.init)(params)
    v = jax.jit(vit.update)(v, params, grads, masks)
    assert jax.tree.structure(v.grad_mean) == jax.tree.structure(params)
    assert int(v.count) == 1 and int(v.nonfinite) == 0
    for m, g in zip(jax.tree.leaves(v.grad_mean), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(m, 0.01 * np.asarray(g), rtol=1e-5, atol=1e-12)


def moments_at_lysed(inner, inner_state, life) -> float:
    """Sum of |params-shaped inner-optimizer state| (moments, accumulators) at lysed weights."""
    zeroed = optax.tree_utils.tree_map_params(
        inner,
        lambda v, s: jnp.where(s == LYSED, v, 0) if jnp.ndim(s) else jnp.zeros(()),
        inner_state,
        life,
        transform_non_params=lambda v: jnp.zeros(()),
    )
    return float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(zeroed)))


def gmp(**kw):
    return emrakul.wrap(
        optax.adam(1e-2),
        controllers.make("gmp"),
        total_steps=STEPS,
        sparsity=SPARSITY,
        every=EVERY,
        **kw,
    )


# ----------------------------------------------------------------------------- filters


def test_regex_selects_linen_paths():
    params, _ = linen_setup()
    assert filters.selected(params) == ["Dense_0/kernel", "Dense_1/kernel", "head/kernel"]
    assert filters.selected(params, filters.regex(r"Dense_[0-2]/kernel")) == [
        "Dense_0/kernel",
        "Dense_1/kernel",
    ]
    assert filters.selected(params, filters.regex(r"kernel", exclude=r"head")) == [
        "Dense_0/kernel",
        "Dense_1/kernel",
    ]
    assert filters.selected(params, filters.regex(r"^Dense_0/")) == ["Dense_0/kernel"]
    assert filters.selected(params, filters.regex(r"^Dense_0/", min_ndim=1)) == [
        "Dense_0/bias",
        "Dense_0/kernel",
    ]
    assert filters.selected(params, filters.regex([r"Dense_1", r"head"], exclude=[r"bias"])) == [
        "Dense_1/kernel",
        "head/kernel",
    ]
    both = filters.all_of(filters.regex(r"kernel"), lambda p, x: x.shape[-1] == 32)
    assert filters.selected(params, both) == ["Dense_0/kernel", "Dense_1/kernel"]
    either = filters.any_of(filters.regex(r"^head/"), filters.regex(r"^Dense_0/"))
    assert filters.selected(params, either) == ["Dense_0/kernel", "head/kernel"]
    assert filters.default is emrakul._tree.default_filter
    assert "exclude=['head']" in repr(filters.regex(r"kernel", exclude=r"head"))


def test_regex_selects_nnx_and_equinox_paths():
    _, params, _, _ = nnx_setup()
    # NNX variables end in '/value'; a pattern works with or without that suffix.
    assert filters.selected(params) == ["head/kernel/value", "l1/kernel/value", "l2/kernel/value"]
    assert filters.selected(params, filters.regex(r"^l1/kernel$")) == ["l1/kernel/value"]
    assert filters.selected(params, filters.regex(r"^l1/kernel/value$")) == ["l1/kernel/value"]
    assert filters.selected(params, filters.regex(r"kernel", exclude=r"^head/kernel$")) == [
        "l1/kernel/value",
        "l2/kernel/value",
    ]
    # norm scales are 1-D: never chosen at the default min_ndim
    assert filters.selected(params, filters.regex(r"norm")) == []
    assert filters.selected(params, filters.regex(r"norm", min_ndim=1)) == [
        "norm/bias/value",
        "norm/scale/value",
    ]
    pytest.importorskip("equinox")
    _, eparams, _ = eqx_setup()
    assert filters.selected(eparams) == ["layers/0/weight", "layers/1/weight", "layers/2/weight"]
    assert filters.selected(eparams, filters.regex(r"layers/0/weight")) == ["layers/0/weight"]


def test_regex_skips_non_floating_leaves():
    tree = {"w": jnp.ones((3, 3)), "count": jnp.zeros((3, 3), jnp.int32)}
    assert filters.selected(tree, filters.regex(r".")) == ["w"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"include": r"Dense_(0"}, ValueError, r"include: 'Dense_\(0'"),
        ({"include": r"kernel", "exclude": [r"ok", r"[head"]}, ValueError, r"exclude: '\[head'"),
        ({"include": []}, ValueError, "at least one"),
        ({"include": 3}, TypeError, "regular expression"),
        ({"include": [r"a", None]}, TypeError, "regular expression"),
        ({"include": r"kernel", "min_ndim": 0}, ValueError, "min_ndim"),
    ],
)
def test_regex_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        filters.regex(**kwargs)


def test_combinator_errors():
    with pytest.raises(ValueError, match="at least one"):
        filters.all_of()
    with pytest.raises(TypeError, match="callable"):
        filters.any_of("kernel")


def test_filter_that_selects_nothing_is_an_error():
    params, _ = linen_setup()
    with pytest.raises(ValueError, match="selected no leaf"):
        gmp(filter=filters.regex(r"Dense_7")).init(params)


# ----------------------------------------------------------------------------- frameworks


def test_linen_gmp_prunes_regex_selected_leaves():
    params, forward = linen_setup()
    tx = gmp(filter=filters.regex(r"kernel", exclude=r"head"))
    params, state, _, loss_fn = train(tx, forward, params)
    check_pruned(params, state, ["Dense_0/kernel", "Dense_1/kernel"])
    assert moments_at_lysed(optax.adam(1e-2), state.inner, state.life.state) == 0.0
    check_vitals(params, state, loss_fn)


def test_nnx_state_gmp_prunes_first_layer_only_and_merges():
    model, params, forward, (graphdef, rest) = nnx_setup()
    assert jax.tree.structure(params) == jax.tree.structure(nnx.state(model, nnx.Param))
    tx = gmp(filter=filters.regex(r"^l1/kernel$"))
    params, state, _, loss_fn = train(tx, forward, params)
    assert isinstance(params, nnx.State)
    check_pruned(params, state, ["l1/kernel/value"])
    # The merged model's outputs are those of the masked forward pass.
    eff = emrakul.masked(params, state)
    assert isinstance(eff, nnx.State)
    merged = nnx.merge(graphdef, eff, rest)
    kernel = np.asarray(merged.l1.kernel[...])
    life = np.asarray(flat(state.life.state)["l1/kernel/value"])
    assert (kernel[life != ALIVE] == 0).all() and (kernel[life == ALIVE] != 0).any()
    manual = jax.tree.map(
        lambda p, s: p * (s == ALIVE) if jnp.ndim(s) else p, params, state.life.state
    )
    np.testing.assert_allclose(merged(X), nnx.merge(graphdef, manual, rest)(X), rtol=1e-6)
    np.testing.assert_allclose(merged(X), jax.jit(forward)(eff, X), rtol=1e-5, atol=1e-6)
    # update the live model in place with the trained (dense) params
    nnx.update(model, params)
    np.testing.assert_array_equal(model.l2.kernel[...], flat(params)["l2/kernel/value"])
    check_vitals(params, state, loss_fn)


def test_equinox_gmp_prunes_all_but_last_layer():
    _, params, forward = eqx_setup()
    tx = gmp(filter=filters.regex(r"weight", exclude=r"layers/2/"))
    params, state, _, loss_fn = train(tx, forward, params)
    check_pruned(params, state, ["layers/0/weight", "layers/1/weight"])
    check_vitals(params, state, loss_fn)


# ----------------------------------------------------------------------------- inner optimizers


def test_inject_hyperparams_rigl_lr_change_and_moment_reset():
    params, forward = linen_setup()
    inner = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    tx = emrakul.wrap(inner, controllers.make("rigl"), total_steps=60, sparsity=0.8, every=5)
    params, state, step, loss_fn = train(tx, forward, params, steps=1, traces=1)
    checked = 0
    for _ in range(23):
        surgery = int(state.step) % 5 == 0
        g = flat(jax.grad(loss_fn)(params, state))
        mu_old = flat(optax.tree_utils.tree_get(state.inner, "mu"))
        life_old = flat(state.life.state)
        params, state, _ = step(params, state)
        if not surgery:
            continue
        mu = flat(optax.tree_utils.tree_get(state.inner, "mu"))
        nu = flat(optax.tree_utils.tree_get(state.inner, "nu"))
        life = flat(state.life.state)
        for k in life:
            if np.ndim(life[k]) == 0:
                continue
            before, after = np.asarray(life_old[k]), np.asarray(life[k])
            grown = (before != ALIVE) & (after == ALIVE)
            cut = (before == ALIVE) & (after != ALIVE)
            kept = (before == ALIVE) & (after == ALIVE)
            # reset to zero by the surgery, then one Adam step: (1 - b1) g and (1 - b2) g^2
            np.testing.assert_allclose(
                np.asarray(mu[k])[grown], 0.1 * np.asarray(g[k])[grown], rtol=1e-5
            )
            np.testing.assert_allclose(
                np.asarray(nu[k])[grown], 1e-3 * np.asarray(g[k])[grown] ** 2, rtol=1e-4
            )
            assert (np.asarray(mu[k])[cut] == 0).all() and (np.asarray(nu[k])[cut] == 0).all()
            np.testing.assert_allclose(
                np.asarray(mu[k])[kept],
                0.9 * np.asarray(mu_old[k])[kept] + 0.1 * np.asarray(g[k])[kept],
                rtol=1e-5,
                atol=1e-7,
            )
            checked += int(grown.sum())
    assert checked > 0  # RigL regrew weights
    np.testing.assert_allclose(float(emrakul.sparsity(state)), 0.8, atol=1e-2)
    assert moments_at_lysed(inner, state.inner, state.life.state) == 0.0

    # The learning rate lives in the inner state: 0 freezes everything, with no retrace.
    def set_lr(state, lr):
        hp = dict(state.inner.hyperparams)
        hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
        return state._replace(inner=state.inner._replace(hyperparams=hp))

    assert int(state.step) % 5 != 0  # no surgery in the next step
    frozen, state0, _ = step(params, set_lr(state, 0.0))
    chex.assert_trees_all_equal(frozen, params)
    moved, _, _ = step(params, set_lr(state, 1e-2))
    assert not np.array_equal(flat(moved)["head/bias"], flat(params)["head/bias"])
    assert float(state0.inner.hyperparams["learning_rate"]) == 0.0


def test_multisteps_inner_on_nnx_state():
    _, params, forward, _ = nnx_setup()
    inner = optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2)
    tx = emrakul.wrap(inner, controllers.make("gmp"), total_steps=STEPS, sparsity=0.8, every=5)
    params, state, step, _ = train(tx, forward, params, steps=STEPS + 2)
    check_pruned(params, state, ["head/kernel/value", "l1/kernel/value", "l2/kernel/value"])
    assert moments_at_lysed(inner, state.inner, state.life.state) == 0.0
    # Gradients accumulate: unpruned leaves move only on every second step.
    assert int(state.step) % 5 != 0 and int(state.inner.mini_step) == 0
    p1, s1, _ = step(params, state)
    np.testing.assert_array_equal(flat(p1)["l1/bias/value"], flat(params)["l1/bias/value"])
    p2, _, _ = step(p1, s1)
    assert not np.array_equal(flat(p2)["l1/bias/value"], flat(p1)["l1/bias/value"])


def test_chain_inner_with_clipping():
    params, forward = linen_setup()
    inner = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    tx = emrakul.wrap(inner, controllers.make("gmp"), total_steps=STEPS, sparsity=0.8, every=5)
    params, state, _, _ = train(tx, forward, params)
    check_pruned(params, state, ["Dense_0/kernel", "Dense_1/kernel", "head/kernel"])
    assert moments_at_lysed(inner, state.inner, state.life.state) == 0.0


# ----------------------------------------------------------------------------- unsupported trees


class _Thing:
    pass


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ({"w": jnp.ones((4, 4)), "name": "dense"}, r"leaf 'name' is a str \('dense'\).*array"),
        ({"w": jnp.ones((4, 4)), "obj": _Thing()}, r"leaf 'obj' is a _Thing, not an array"),
        ({"w": jnp.ones((4, 4)), "key": jax.random.key(0)}, r"leaf 'key' is a PRNG key"),
    ],
)
def test_non_array_leaves_are_rejected(tree, match):
    tx = gmp()
    with pytest.raises(TypeError, match=match):
        tx.init(tree)
    with pytest.raises(TypeError, match=match):
        vit.init(tree)


def test_nnx_module_and_full_state_are_rejected():
    model, params, _, _ = nnx_setup()
    tx = gmp()
    fix = re.escape("nnx.state(model, nnx.Param)")
    with pytest.raises(TypeError, match=rf"NNX object \(NNXNet\).*{fix}"):
        tx.init(model)
    with pytest.raises(TypeError, match=rf"NNX object \(NNXNet\).*{fix}"):
        jax.jit(tx.init)(model)  # under jit, too
    with pytest.raises(TypeError, match=rf"'drop/rngs/.*' is an nnx\.Rng.*{fix}"):
        tx.init(nnx.state(model))
    with pytest.raises(TypeError, match=fix):
        vit.init(model)
    state = tx.init(params)
    with pytest.raises(TypeError, match=fix):
        emrakul.masked(model, state)
    with pytest.raises(TypeError, match=fix):
        tx.update(params, state, model)


def test_unfiltered_equinox_model_is_rejected():
    model, _, _ = eqx_setup()
    with pytest.raises(TypeError, match=re.escape("eqx.partition(model, eqx.is_inexact_array)")):
        gmp().init(model)


# ----------------------------------------------------------------------------- example


def test_own_loop_example_runs(capsys):
    path = pathlib.Path(__file__).parents[1] / "experiments" / "own_loop.py"
    spec = importlib.util.spec_from_file_location("own_loop_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(steps=400)
    assert "test accuracy" in capsys.readouterr().out
    np.testing.assert_allclose(result["sparsity"], 0.9, atol=1e-2)
    assert result["test_accuracy"] > 0.3  # chance is 0.1
