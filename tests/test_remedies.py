"""Plasticity remedies: the weight rewrite, unit re-initialisation and the four controllers,
against NumPy references, under jit and vmap, and through emrakul.wrap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emrakul
from emrakul import controllers as ctl
from emrakul.controllers.base import Observation
from emrakul.controllers.unit_reset import (
    hidden_layers,
    live_units,
    lowest,
    outgoing_magnitude,
    reinit_units,
)
from emrakul.surgery import lifecycle
from emrakul.surgery.lifecycle import ALIVE, LYSED
from emrakul.surgery.rewrite import Rewrite, apply_rewrite, check_rewrite, identity

SHAPES = {"Dense_0": (8, 6), "Dense_1": (6, 5), "Dense_2": (5, 3)}


def stack(seed=0):
    rng = np.random.default_rng(seed)
    return {
        name: {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32),
               "bias": jnp.asarray(rng.normal(size=s[-1:]), jnp.float32)}
        for name, s in SHAPES.items()
    }  # fmt: skip


def life_of(params):
    return lifecycle.init(emrakul.masks.init(params)).state


def obs_of(params, step=0, activations=None, vitals=None, interval=50, state=None):
    state = life_of(params) if state is None else state
    sizes = tuple(int(np.size(s)) for s in jax.tree.leaves(state) if np.ndim(s) > 0)
    return Observation(
        step=jnp.asarray(step, jnp.int32), total_steps=10_000, params=params,
        grads=jax.tree.map(jnp.zeros_like, params), state=state, vitals=vitals,
        layer_size=sizes, target=jnp.zeros((len(sizes),), jnp.float32),
        key=jax.random.PRNGKey(3), activations=activations,
        interval=jnp.asarray(interval, jnp.int32),
    )  # fmt: skip


# ------------------------------------------------------------------------------------ rewrite


def test_apply_rewrite_matches_numpy_and_keeps_lysed_weights_zero(rng):
    params = stack()
    state = life_of(params)
    lysed = rng.random((8, 6)) < 0.3
    state["Dense_0"]["kernel"] = jnp.where(lysed, LYSED, ALIVE).astype(jnp.int8)
    keep = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape), jnp.float32), params)
    add = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    reset = jax.tree.map(lambda p: jnp.zeros((), bool), params)
    out = jax.jit(apply_rewrite)(params, state, Rewrite(keep, add, reset))
    for path in [("Dense_0", "kernel"), ("Dense_1", "bias"), ("Dense_2", "kernel")]:
        p, k, a = (np.asarray(t[path[0]][path[1]]) for t in (params, keep, add))
        ref = k * p + a
        if path == ("Dense_0", "kernel"):
            ref = np.where(lysed, 0.0, ref)
        np.testing.assert_allclose(np.asarray(out[path[0]][path[1]]), ref, rtol=1e-6)


def test_identity_rewrite_changes_nothing():
    params = stack()
    out = apply_rewrite(params, life_of(params), identity(params))
    jax.tree.map(np.testing.assert_array_equal, out, params)


def test_check_rewrite_names_the_bad_leaf():
    params = stack()
    bad = identity(params)
    bad.add["Dense_1"]["kernel"] = jnp.zeros((4, 4))
    with pytest.raises(ValueError, match=r"rewrite.add at \['Dense_1'\]\['kernel'\]"):
        check_rewrite(params, bad)
    with pytest.raises(ValueError, match=r"rewrite\.keep"):
        check_rewrite(params, Rewrite({"x": 1.0}, bad.add, bad.reset))
    with pytest.raises(ValueError, match="must be an emrakul Rewrite"):
        check_rewrite(params, (1, 2, 3))


# ------------------------------------------------------------------------------- unit reset


def test_reinit_units_rewrites_incoming_bias_and_outgoing_only():
    params = stack()
    marked = {"Dense_0": jnp.asarray([1, 0, 0, 1, 0, 0], bool),
              "Dense_1": jnp.asarray([0, 0, 1, 0, 0], bool)}  # fmt: skip
    rw = reinit_units(params, marked, jax.random.PRNGKey(0))
    out = apply_rewrite(params, life_of(params), rw)
    p, o = jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, out)
    # incoming columns fresh (changed, bounded by the truncated normal), bias zero
    for name, units in marked.items():
        u = np.asarray(units)
        k_new, k_old = o[name]["kernel"], p[name]["kernel"]
        std = np.sqrt(1.0 / k_old.shape[0]) / 0.87962566
        assert np.all(k_new[:, u] != k_old[:, u]) and np.all(np.abs(k_new[:, u]) <= 2 * std)
        np.testing.assert_array_equal(o[name]["bias"][u], 0.0)
        np.testing.assert_array_equal(o[name]["bias"][~u], p[name]["bias"][~u])
        assert np.all(np.asarray(rw.reset[name]["kernel"])[:, u])
    # outgoing rows zero; every other weight of a consumer untouched
    rows0, rows1 = np.asarray(marked["Dense_0"]), np.asarray(marked["Dense_1"])
    # (a Dense_1 unit that is itself re-initialised takes fresh weights from every row)
    np.testing.assert_array_equal(o["Dense_1"]["kernel"][rows0][:, ~rows1], 0.0)
    np.testing.assert_array_equal(o["Dense_2"]["kernel"][rows1], 0.0)
    np.testing.assert_array_equal(o["Dense_2"]["kernel"][~rows1], p["Dense_2"]["kernel"][~rows1])
    # Dense_1: rows of Dense_0's units zero, columns of its own units fresh, the rest unchanged
    rest = ~rows0[:, None] & ~rows1[None, :]
    np.testing.assert_array_equal(o["Dense_1"]["kernel"][rest], p["Dense_1"]["kernel"][rest])
    np.testing.assert_array_equal(o["Dense_2"]["bias"], p["Dense_2"]["bias"])


def test_hidden_layers_and_outgoing_magnitude():
    params = stack()
    assert hidden_layers(params) == (("Dense_0", "Dense_1"), ("Dense_1", "Dense_2"))
    ref = np.abs(np.asarray(params["Dense_1"]["kernel"])).sum(1)
    np.testing.assert_allclose(outgoing_magnitude(params, "Dense_0", "Dense_1"), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="sequential Dense/Conv stack"):
        hidden_layers({"encoder": {"kernel": jnp.zeros((2, 2))}})
    with pytest.raises(ValueError, match="needs a hidden layer"):
        hidden_layers({"Dense_0": {"kernel": jnp.zeros((2, 2))}})


def _random_life(params, rng, p_dead=0.6):
    """A lifecycle with most weights SEDATED or LYSED, some units wholly cut off."""
    state = {}
    for name, layer in params.items():
        k = rng.choice([ALIVE, 1, LYSED], size=layer["kernel"].shape, p=[1 - p_dead, 0.3, 0.3])
        k[:, 0] = LYSED  # unit 0 has no incoming weight
        state[name] = {"kernel": jnp.asarray(k, jnp.int8), "bias": jnp.int8(ALIVE)}
    return state


def test_live_units_and_masked_outgoing_magnitude_match_numpy(rng):
    params = stack()
    life = _random_life(params, rng)
    for prod, cons in hidden_layers(params):
        k_in = np.asarray(life[prod]["kernel"]) == ALIVE
        k_out = np.asarray(life[cons]["kernel"]) == ALIVE
        ref = np.array([k_in[:, i].any() and k_out[i, :].any() for i in range(k_in.shape[1])])
        got = jax.jit(lambda p, s, a=prod, b=cons: live_units(p, s, a, b))(params, life)
        np.testing.assert_array_equal(np.asarray(got), ref)
        assert not ref[0]
        w = np.abs(np.asarray(params[cons]["kernel"])) * k_out
        np.testing.assert_allclose(
            outgoing_magnitude(params, prod, cons, life), w.sum(1), rtol=1e-6
        )
    assert np.all(np.asarray(live_units(params, life_of(params), "Dense_0", "Dense_1")))
    assert np.all(np.asarray(live_units(params, None, "Dense_0", "Dense_1")))


# ------------------------------------------------------------------------------ controllers


def _scores(rng):
    return {n: {"kernel": jnp.asarray(rng.random(s[-1]), jnp.float32), "bias": 0.0}
            for n, s in SHAPES.items()}  # fmt: skip


def test_lowest_picks_the_lowest_eligible(rng):
    score = rng.random(20)
    eligible = rng.random(20) < 0.6
    out = np.asarray(lowest(jnp.asarray(score), jnp.asarray(eligible), jnp.int32(3)))
    idx = np.flatnonzero(eligible)
    ref = np.zeros(20, bool)
    ref[idx[np.argsort(score[idx])[:3]]] = True
    np.testing.assert_array_equal(out, ref)


def test_continual_backprop_replaces_lowest_utility_mature_units(rng):
    """rate * steps * mature units are owed per surgery; the lowest-utility ones are paid."""
    params = stack()
    c = ctl.make("continual_backprop", replacement_rate=0.01, decay=0.0, maturity=30)
    acts = _scores(rng)
    state = c.init(params, obs_of(params))
    decide = jax.jit(lambda o, s: c.decide(o, s))
    dec, state = decide(obs_of(params, activations=acts, interval=20), state)
    # ages 20 < maturity: nothing replaced, nothing owed
    assert not any(np.any(np.asarray(r)) for r in jax.tree.leaves(dec.rewrite.reset))
    dec, state = decide(obs_of(params, 20, activations=acts, interval=20), state)
    # age 40 > 30: owed 0.01 * 20 * 6 = 1.2 -> one unit of Dense_0; 1.0 -> one unit of Dense_1
    util0 = np.asarray(acts["Dense_0"]["kernel"]) * np.abs(
        np.asarray(params["Dense_1"]["kernel"])
    ).sum(1)
    cols = np.asarray(dec.rewrite.reset["Dense_0"]["kernel"])[0]
    assert cols.sum() == 1 and cols[np.argmin(util0)]
    assert np.asarray(dec.rewrite.reset["Dense_1"]["kernel"])[0].sum() == 1
    np.testing.assert_allclose(float(state.owed[0]), 0.2, atol=1e-5)
    assert (
        int(state.age[0][np.argmin(util0)]) == 0 and float(state.utility[0][np.argmin(util0)]) == 0
    )
    assert not np.any(np.asarray(dec.rewrite.reset["Dense_2"]["bias"]))  # outputs never reset
    assert not bool(dec.operate)


def test_continual_backprop_in_a_sparse_network_replaces_live_units_only(rng):
    """Units the pruner cut off have utility 0; they must not take the replacements."""
    params = stack()
    life = _random_life(params, rng)
    c = ctl.make("continual_backprop", replacement_rate=0.05, decay=0.0, maturity=0)
    acts = _scores(rng)
    state = c.init(params, obs_of(params, state=life))
    dec, _ = c.decide(obs_of(params, activations=acts, interval=20, state=life), state)
    for prod, cons in hidden_layers(params):
        live = np.asarray(live_units(params, life, prod, cons))
        cols = np.asarray(dec.rewrite.reset[prod]["kernel"])[0]
        owed = int(np.floor(0.05 * 20 * live.sum() + 1e-6))
        assert cols.sum() == min(owed, live.sum()) > 0
        assert not np.any(cols & ~live)


def test_continual_backprop_under_vmap(rng):
    params = stack()
    c = ctl.make("continual_backprop", replacement_rate=0.05, maturity=0)
    acts = _scores(rng)
    state = c.init(params, obs_of(params))
    batched = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    steps = jnp.asarray([0, 50])
    dec, new = jax.vmap(lambda s, t: c.decide(obs_of(params, t, activations=acts), s))(
        batched, steps
    )
    assert np.asarray(dec.rewrite.reset["Dense_0"]["kernel"]).shape == (2, 8, 6)
    assert np.all(np.asarray(new.age[0]) <= 50)


def test_redo_recycles_dormant_units_every_period():
    params = stack()
    c = ctl.make("redo", tau=0.1, period=100)
    acts = {n: {"kernel": jnp.ones(s[-1]), "bias": 0.0} for n, s in SHAPES.items()}
    acts["Dense_1"]["kernel"] = jnp.asarray([1.0, 0.05, 1.0, 0.0, 1.0])
    state = c.init(params, obs_of(params))
    dec, state = c.decide(obs_of(params, 50, activations=acts), state)
    assert not np.any(np.asarray(dec.rewrite.reset["Dense_1"]["kernel"]))  # before the period
    dec, state = c.decide(obs_of(params, 100, activations=acts), state)
    np.testing.assert_array_equal(
        np.asarray(dec.rewrite.reset["Dense_1"]["kernel"])[0], [0, 1, 0, 1, 0]
    )
    assert not np.any(np.asarray(dec.rewrite.reset["Dense_0"]["kernel"]))
    assert int(state.last) == 100
    dec, _ = c.decide(obs_of(params, 150, activations=acts), state)
    assert not np.any(np.asarray(dec.rewrite.reset["Dense_1"]["kernel"]))


def test_shrink_perturb_scales_and_adds_noise_of_the_interval():
    params = {"Dense_0": {"kernel": jnp.ones((400, 50))}, "Dense_1": {"kernel": jnp.ones((50, 2))}}
    c = ctl.make("shrink_perturb", shrink=1e-3, noise=1e-2)
    dec, _ = c.decide(obs_of(params, interval=25), c.init(params))
    np.testing.assert_allclose(float(dec.rewrite.keep["Dense_0"]["kernel"]), 0.999**25, rtol=1e-6)
    noise = np.asarray(dec.rewrite.add["Dense_0"]["kernel"])
    assert abs(noise.std() - 1e-2 * 5) < 0.05 * 1e-2 * 5 and abs(noise.mean()) < 1e-3


def test_selective_forgetting_reinitialises_top_fisher_weights_on_saturation():
    params = stack()
    c = ctl.make("selective_forgetting", fraction=0.25, tolerance=0.05, gap=100)
    vit_state = emrakul.vitals.init(params)
    fisher = jax.tree.map(lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape), params)
    vit_state = vit_state._replace(grad_sq=fisher)
    state = c.init(params)
    dec, state = c.decide(obs_of(params, 100, vitals=vit_state), state)  # first trace: no fire
    assert not np.any(np.asarray(dec.rewrite.reset["Dense_0"]["kernel"]))
    dec, state = c.decide(obs_of(params, 150, vitals=vit_state), state)  # saturated
    hit = np.asarray(dec.rewrite.reset["Dense_0"]["kernel"])
    assert hit.sum() == 12 and hit.reshape(-1)[-12:].all()  # the 25% largest of 48
    dec, _ = c.decide(obs_of(params, 200, vitals=vit_state), state)  # within the gap
    assert not np.any(np.asarray(dec.rewrite.reset["Dense_0"]["kernel"]))
    with pytest.raises(ValueError, match="needs vital signs"):
        c.decide(obs_of(params, 100), state)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("continual_backprop", {"replacement_rate": 1.0}, "replacement_rate"),
        ("continual_backprop", {"maturity": -1}, "maturity"),
        ("redo", {"tau": -0.1}, "tau"),
        ("redo", {"period": 0}, "period"),
        ("shrink_perturb", {"shrink": 1.5}, "shrink"),
        ("shrink_perturb", {"noise": -1.0}, "noise"),
        ("selective_forgetting", {"fraction": 2.0}, "fraction"),
        ("selective_forgetting", {"gap": 0}, "gap"),
    ],
)
def test_remedies_reject_bad_settings(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ctl.make(name, **kwargs)


# ------------------------------------------------------------------------------- via wrap


def test_a_rewrite_goes_through_wrap_with_moments_restarted():
    """continual backprop inside emrakul.wrap: replaced units' weights and Adam moments."""
    params = stack()
    c = ctl.make("continual_backprop", replacement_rate=0.2, decay=0.0, maturity=0)
    tx = emrakul.wrap(optax.adam(1e-2), c, total_steps=100, sparsity=0.0, every=10)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(lambda g, s, p, surgery: tx.update(g, s, p, surgery=surgery), static_argnums=3)
    for _ in range(3):  # build up moments
        u, state = update(grads, state, params, False)
        params = optax.apply_updates(params, u)
    acts = {}  # the loop passes activation_stats' dict, layer name -> ActivationStats
    for n, s in SHAPES.items():
        score = jnp.linspace(1.0, 2.0, s[-1])
        acts[n] = emrakul.vitals.ActivationStats(score, score, score <= 0)
    before = params
    u, state = jax.jit(lambda g, s, p: tx.update(g, s, p, surgery=True, activations=acts))(
        grads, state, params
    )
    after = optax.apply_updates(params, u)
    # 0.2 * 10 steps * 6 units = 12 owed, all 6 units of Dense_0 replaced; its bias is zero
    # before the inner update, so after it the bias equals Adam's first step from fresh moments
    mu = state.inner[0].mu
    b = np.asarray(after["Dense_0"]["bias"])
    # fresh moments under Adam's shared step count (4): mu = 0.1, nu = 0.001, bias-corrected
    step = 1e-2 * (0.1 / (1 - 0.9**4)) / np.sqrt(0.001 / (1 - 0.999**4))
    np.testing.assert_allclose(b, -step, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(mu["Dense_0"]["bias"]), 0.1, rtol=1e-5)
    assert not np.allclose(
        np.asarray(after["Dense_0"]["kernel"]), np.asarray(before["Dense_0"]["kernel"])
    )


# ------------------------------------------------------------------------ with a pruner


def test_a_pruner_with_a_remedy_prunes_and_rewrites(rng):
    """``gmp+continual_backprop``: GMP's schedule and scores, continual backprop's rewrite."""
    params = stack()
    both = ctl.make("gmp+continual_backprop")
    assert both.name == "gmp+continual_backprop" and both.needs_activations
    gmp = ctl.make("gmp")
    obs = obs_of(params, 5000, activations=_scores(rng))
    obs = obs._replace(target=jnp.full((3,), 0.8, jnp.float32))
    state = both.init(params, obs)
    dec, new = jax.jit(lambda s: both.decide(obs, s))(state)
    ref, _ = gmp.decide(obs, gmp.init(params, obs))
    np.testing.assert_allclose(np.asarray(dec.sparsity), np.asarray(ref.sparsity))
    assert bool(dec.operate) and dec.rewrite is not None
    assert int(new.remedy.age[0][0]) == 50 and not bool(state.pruner.fired)


def test_combined_names_are_checked():
    assert ctl.known("breathing+shrink_perturb") and not ctl.known("breathing+nope")
    assert not ctl.known("a+b+c") and ctl.known("gmp")
    with pytest.raises(ValueError, match="'pruner\\+remedy'"):
        ctl.make("gmp+redo+set")
    with pytest.raises(ValueError, match="keyword arguments to each part"):
        ctl.make("gmp+redo", tau=0.2)
    with pytest.raises(ValueError, match="must be a dense controller"):
        ctl.make("gmp+l0")
    params = stack()
    twice = ctl.make("continual_backprop+shrink_perturb")
    with pytest.raises(ValueError, match="rewrites weights itself"):
        twice.decide(obs_of(params), twice.init(params, obs_of(params)))
