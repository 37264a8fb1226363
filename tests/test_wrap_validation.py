"""emrakul.wrap validates at ``init``: structure, budget and filter errors name the leaf's path.

Every check that needs the parameters runs in ``tx.init``, before any step is traced, and the
message names the leaf as :func:`emrakul._tree.path_str` writes it (``Dense_0/kernel``). The
checks that need no parameters run in ``wrap`` itself. The static settings are one frozen,
hashable :class:`emrakul.wrapper.WrapSettings`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emrakul
from emrakul import controllers, filters
from emrakul.masks import NM, Units, Unstructured
from emrakul.masks.structures import check_fits
from emrakul.surgery.budgets import check_budget, layer_sparsities
from emrakul.surgery.lifecycle import LYSED
from emrakul.wrapper import WrapSettings, check_structure_fits, init_state, update_state


class Net(nn.Module):
    """Dense_0 kernel [8, 6] (last axis not a multiple of 4), Dense_1 kernel [6, 4]."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6)(x))
        return nn.Dense(4)(x)


PARAMS = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]


def make(**kw) -> optax.GradientTransformationExtraArgs:
    """A wrapped optimizer; building it must succeed (the errors under test come from init)."""
    return emrakul.wrap(optax.sgd(0.1), controllers.gmp(), total_steps=10, **kw)


# ----------------------------------------------------------------------------- at init


def test_nm_on_an_axis_not_divisible_by_m_fails_at_init_naming_the_path():
    tx = make(structure=NM(2, 4))
    with pytest.raises(ValueError, match=r"'Dense_0/kernel' of shape \(8, 6\) does not fit"):
        tx.init(PARAMS)


def test_nm_along_an_axis_that_fits_passes():
    tx = make(structure=NM(2, 4, axis=0))  # Dense_0: 8 rows, Dense_1: 6 rows -> no
    with pytest.raises(ValueError, match="'Dense_1/kernel'"):
        tx.init(PARAMS)
    tx = make(structure=NM(2, 2, axis=0))
    state = tx.init(PARAMS)
    assert state.life.state["Dense_0"]["kernel"].shape == (8, 6)


@pytest.mark.parametrize("structure", [NM(2, 4, axis=2), NM(2, 4, axis=-3), Units(axis=2)])
def test_structure_axis_out_of_range_fails_at_init(structure):
    tx = make(structure=structure)
    with pytest.raises(ValueError, match=r"'Dense_0/kernel'.*axis -?\d+ is out of range"):
        tx.init(PARAMS)


def test_structure_axis_that_is_not_an_int_fails_at_init():
    tx = make(structure=Units(axis=1.0))
    with pytest.raises(TypeError, match=r"'Dense_0/kernel'.*int axis"):
        tx.init(PARAMS)


def test_per_leaf_structure_returning_a_non_structure_names_the_path():
    def choose(path, leaf):
        return "nm" if "Dense_1" in emrakul._tree.path_str(path) else Unstructured()

    tx = make(structure=choose)
    with pytest.raises(TypeError, match=r"'Dense_1/kernel'.*unknown sparsity structure"):
        tx.init(PARAMS)


def test_per_leaf_structure_returning_an_invalid_structure_names_the_path():
    tx = make(structure=lambda path, leaf: NM(5, 4))
    with pytest.raises(ValueError, match=r"'Dense_0/kernel'.*n <= m"):
        tx.init(PARAMS)


def test_per_leaf_structure_that_does_not_fit_names_the_path():
    tx = make(structure=lambda path, leaf: NM(2, 4) if leaf.shape[-1] == 6 else Unstructured())
    with pytest.raises(ValueError, match=r"'Dense_0/kernel'.*does not fit"):
        tx.init(PARAMS)


def test_filter_that_selects_no_leaf_fails_at_init_listing_the_leaves():
    tx = make(filter=filters.regex(r"Dense_7"))
    with pytest.raises(ValueError, match=r"selected no leaf to prune.*Dense_0/kernel"):
        tx.init(PARAMS)


def test_filter_that_selects_a_non_floating_leaf_fails_at_init():
    params = {**PARAMS, "count": jnp.zeros((3, 3), jnp.int32)}
    tx = make(filter=lambda path, leaf: np.ndim(leaf) >= 2)
    with pytest.raises(TypeError, match=r"'count'.*int32"):
        tx.init(params)


def test_filter_that_selects_a_scalar_leaf_fails_at_init():
    params = {**PARAMS, "scale": jnp.float32(1.0)}
    tx = make(filter=lambda path, leaf: True)
    with pytest.raises(ValueError, match="scalar leaf 'scale'"):
        tx.init(params)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_budget_rejecting_an_empty_leaf_names_it_at_init(distribution):
    params = {**PARAMS, "empty": {"kernel": jnp.zeros((0, 4))}}
    tx = make(distribution=distribution)
    with pytest.raises(ValueError, match=r"pruned leaf 'empty/kernel'.*empty dimension"):
        tx.init(params)


def test_init_checks_run_before_compilation_also_under_jit_and_vmap():
    tx = make(structure=NM(2, 4))
    with pytest.raises(ValueError, match="'Dense_0/kernel'"):
        jax.jit(tx.init)(PARAMS)
    batched = jax.tree.map(lambda p: jnp.stack([p, p]), PARAMS)
    with pytest.raises(ValueError, match="'Dense_0/kernel'"):
        jax.vmap(tx.init)(batched)
    good = make(structure=NM(2, 2, axis=0))
    state = jax.vmap(good.init)(batched)
    assert state.life.state["Dense_0"]["kernel"].shape == (2, 8, 6)
    assert state.knobs.target.shape == (2, 2)


# ----------------------------------------------------------------------------- at wrap


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sparsity": 1.0}, ValueError, "sparsity must lie"),
        ({"distribution": "gaussian"}, ValueError, "distribution"),
        ({"every": 0}, ValueError, "every"),
        ({"every": 2.5}, TypeError, "every must be an int"),
        ({"cooldown": -1}, ValueError, "cooldown"),
        ({"structure": NM(5, 4)}, ValueError, "n <= m"),
        ({"structure": "nm"}, TypeError, "unknown sparsity structure"),
        ({"filter": "kernel"}, TypeError, "filter must be"),
    ],
)
def test_arguments_that_need_no_params_fail_in_wrap(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


@pytest.mark.parametrize("total_steps", [0, True, 2.0])
def test_total_steps_must_be_a_positive_int(total_steps):
    with pytest.raises(ValueError, match="total_steps"):
        emrakul.wrap(optax.sgd(0.1), controllers.gmp(), total_steps=total_steps)


def test_inner_and_controller_are_checked_in_wrap():
    with pytest.raises(TypeError, match="GradientTransformation"):
        emrakul.wrap("adam", controllers.gmp(), total_steps=10)
    with pytest.raises(TypeError, match="Controller"):
        emrakul.wrap(optax.sgd(0.1), "gmp", total_steps=10)


# ----------------------------------------------------------------------------- helpers


def test_check_fits():
    check_fits(Unstructured(), (3, 5))
    check_fits(NM(2, 4, axis=0), (8, 6))
    check_fits(Units(axis=-2), (8, 6))
    with pytest.raises(ValueError, match=r"w of shape \(8, 6\) does not fit.*multiple of m=4"):
        check_fits(NM(2, 4), (8, 6), "w")
    with pytest.raises(ValueError, match="out of range"):
        check_fits(Units(axis=-3), (8, 6))
    with pytest.raises(ValueError, match="out of range"):
        check_fits(Units(), ())
    with pytest.raises(TypeError, match="unknown sparsity structure"):
        check_fits("units", (8, 6))


def test_check_structure_fits_on_shapes_only():
    shapes = jax.eval_shape(lambda: PARAMS)
    got = check_structure_fits(shapes, NM(2, 2, axis=0))
    assert got == (NM(2, 2, axis=0), NM(2, 2, axis=0))
    assert check_structure_fits(shapes, filter=filters.regex("Dense_1")) == (Unstructured(),)
    with pytest.raises(ValueError, match="'Dense_0/kernel'"):
        check_structure_fits(shapes, NM(2, 4))


def test_budget_helpers():
    check_budget(0.5, "erk")
    with pytest.raises(ValueError, match="target"):
        check_budget(1.0, "uniform")
    with pytest.raises(ValueError, match="distribution"):
        check_budget(0.5, "gaussian")
    with pytest.raises(ValueError, match="pruned leaf 'b' \\(shapes\\[1\\]\\)"):
        layer_sparsities([(3, 4), (0, 4)], 0.5, names=["a", "b"])
    with pytest.raises(ValueError, match="names must name every shape"):
        layer_sparsities([(3, 4)], 0.5, names=["a", "b"])


def test_operate_names_the_leaf_that_does_not_fit():
    tx = make(structure=NM(2, 2, axis=0))
    state = tx.init(PARAMS)
    obs = emrakul.wrapper.observation(
        PARAMS,
        jax.tree.map(jnp.zeros_like, PARAMS),
        state.life.state,
        None,
        state.knobs.target,
        state.step,
        state.key,
        state.health,
        total_steps=10,
    )
    decision, _ = controllers.gmp().decide(obs, state.controller)
    with pytest.raises(ValueError, match=r"pruned leaf 'Dense_0/kernel'.*does not fit"):
        emrakul.surgery.operate(
            state.life,
            decision,
            PARAMS,
            0,
            structures=(NM(2, 4), NM(2, 4)),
            drop_to=LYSED,
            regrow_lysed=False,
            cooldown=0,
        )


# ----------------------------------------------------------------------------- settings


def test_settings_are_frozen_hashable_and_build_the_same_transformation():
    kw = dict(inner=optax.sgd(0.1), controller=controllers.gmp(), total_steps=10)
    a = WrapSettings(**kw, every=np.int64(5), sparsity=np.float32(0.5))
    b = WrapSettings(**kw, every=5, sparsity=0.5)
    assert a == b and hash(a) == hash(b)
    assert type(a.every) is int and type(a.sparsity) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.every = 3
    tx = emrakul.wrapper.transformation(a)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    state = init_state(a, PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    u1, s1 = jax.jit(lambda g, s, p: update_state(a, g, s, p))(grads, state, PARAMS)
    u2, s2 = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
    for x, y in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_update_vmaps_over_a_population_of_hosts():
    tx = emrakul.wrap(
        optax.sgd(0.1), controllers.gmp(0.0, 0.5), total_steps=4, sparsity=0.5, every=1
    )
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    params = jax.vmap(lambda k: Net().init(k, jnp.ones((1, 8)))["params"])(keys)
    grads = jax.tree.map(jnp.ones_like, params)
    step = jax.jit(jax.vmap(tx.update))
    state = jax.vmap(tx.init)(params)
    for _ in range(3):
        _, state = step(grads, state, params)
    assert state.step.tolist() == [3, 3, 3]
    one_step = jax.jit(tx.update)
    for b in range(3):
        one = jax.tree.map(lambda x, b=b: x[b], params)
        s = tx.init(one)
        for _ in range(3):
            _, s = one_step(jax.tree.map(jnp.ones_like, one), s, one)
        np.testing.assert_array_equal(
            s.life.state["Dense_0"]["kernel"], state.life.state["Dense_0"]["kernel"][b]
        )
        assert float(emrakul.sparsity(s)) > 0.0
