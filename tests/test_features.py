"""What the Magistrate observes: the enumerated region features and the named globals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul import vitals
from emrakul.agent import features
from emrakul.controllers.base import Observation
from emrakul.masks import Units
from emrakul.surgery.lifecycle import ALIVE, SEDATED
from emrakul.vitals import regions as rg

SHAPES = {"d0": {"kernel": (8, 6), "bias": (6,)}, "d1": {"kernel": (6, 3), "bias": (3,)}}
R_MAX, L_MAX = 12, 4


def _host(seed=0, activations=None, health=None):
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )
    life = jax.tree.map(
        lambda p: (
            jnp.asarray(rng.integers(0, 3, p.shape), jnp.int8) if p.ndim == 2 else jnp.int8(ALIVE)
        ),
        params,
    )
    vit = vitals.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        vit = vitals.update(vit, params, grads)
    obs = Observation(
        step=jnp.int32(5),
        total_steps=20,
        params=params,
        grads=params,
        state=life,
        vitals=vit,
        layer_size=(48, 18),
        target=jnp.asarray([0.5, 0.8]),
        key=jax.random.key(0),
        activations=activations,
        health=health,
    )
    return obs, rg.layout(params, Units(-1))


def test_names_are_enumerated_from_the_tables():
    assert tuple(f.name for f in features.REGION_FEATURES) == features.SIGNALS
    assert (*sorted(features.SIGNALS), "log_size", "depth") == features.FEATURE_NAMES
    assert len(features.SIGNALS) + 2 == features.NUM_FEATURES
    assert features.NUM_GLOBALS == len(features.GLOBAL_NAMES) == 9


def test_region_signals_are_shaped_like_the_params():
    obs, _ = _host()
    host = features.HostSignals(obs, vitals.gsnr(obs.vitals), vitals.fisher(obs.vitals))
    signals = features.region_signals(host)
    assert tuple(signals) == features.SIGNALS
    for name, tree in signals.items():
        for leaf, p in zip(jax.tree.leaves(tree), jax.tree.leaves(obs.params), strict=True):
            assert jnp.shape(leaf) == p.shape, name
    alive = signals["alive"]["d0"]["kernel"]
    np.testing.assert_array_equal(alive, obs.state["d0"]["kernel"] == ALIVE)
    sedated = signals["sedated"]["d1"]["kernel"]
    np.testing.assert_array_equal(sedated, obs.state["d1"]["kernel"] == SEDATED)


def test_observation_shapes_padding_and_jit():
    obs, layout = _host()
    out = features.observe(obs, layout, R_MAX, L_MAX)
    assert out.regions.shape == (R_MAX, features.NUM_FEATURES)
    assert out.globals.shape == (features.NUM_GLOBALS,)
    np.testing.assert_array_equal(out.region_valid, np.arange(R_MAX) < 9)
    np.testing.assert_array_equal(out.layer_valid, np.arange(L_MAX) < 2)
    np.testing.assert_array_equal(out.regions[9:], 0.0)
    jitted = jax.jit(lambda o: features.observe(o, layout, R_MAX, L_MAX))(obs)
    for a, b in zip(out, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_globals_by_name():
    acts = jax.tree.map(lambda s: jnp.float32(0.0), SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    obs, layout = _host(activations=acts, health=jnp.asarray([0.5, -3.0, 0.75]))
    values = features.observe(obs, layout, R_MAX, L_MAX).globals
    g = dict(zip(features.GLOBAL_NAMES, values, strict=True))
    kernels = [obs.state["d0"]["kernel"], obs.state["d1"]["kernel"]]
    alive = sum(int(jnp.sum(k == ALIVE)) for k in kernels)
    np.testing.assert_allclose(g["progress"], 5 / 20)
    np.testing.assert_allclose(g["sparsity"], 1 - alive / 66, rtol=1e-6)
    np.testing.assert_allclose(g["target_sparsity"], 0.65, rtol=1e-6)
    np.testing.assert_allclose(g["log_loss"], np.log(0.5 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(g["loss_slope"], -1.0)
    np.testing.assert_allclose(g["val_accuracy"], 0.75)
    trace = sum(float(jnp.sum(f)) for f in jax.tree.leaves(vitals.fisher(obs.vitals)))
    np.testing.assert_allclose(g["log_fisher_trace"], np.log(trace), rtol=1e-5)


def test_drop_zeroes_only_its_columns():
    obs, layout = _host()
    full = features.observe(obs, layout, R_MAX, L_MAX)
    dropped = features.observe(obs, layout, R_MAX, L_MAX, drop=("gsnr", "age"))
    for j, name in enumerate(features.FEATURE_NAMES):
        if name in ("gsnr", "age"):
            np.testing.assert_array_equal(dropped.regions[:, j], 0.0)
        else:
            np.testing.assert_array_equal(dropped.regions[:, j], full.regions[:, j])


def test_bad_inputs_are_named():
    obs, layout = _host()
    with pytest.raises(ValueError, match=r"more than r_max=4"):
        features.observe(obs, layout, 4, L_MAX)
    with pytest.raises(ValueError, match=r"unknown observation groups \['nope'\]"):
        features.observe(obs, layout, R_MAX, L_MAX, drop=("nope",))
    with pytest.raises(ValueError, match=r"needs vital signs"):
        features.observe(obs._replace(vitals=None), layout, R_MAX, L_MAX)
