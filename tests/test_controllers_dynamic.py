"""GSNR, DSD, harmonic and breathing controllers: simulated runs realised by the surgery rule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from controller_sim import (
    TARGET,
    expected,
    init,
    jit_decide,
    kernels,
    layer_sparsity,
    make_params,
    observation,
    realise,
)

from emrakul import vitals as vit
from emrakul.controllers import dynamic, schedules
from emrakul.masks import Unstructured
from emrakul.surgery import lifecycle
from emrakul.surgery.lifecycle import ALIVE, LYSED, NEVER, SEDATED
from emrakul.surgery.operate import operate

T = 1000
EVERY = 50


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def states_of(state):
    return [np.asarray(s) for s in kernels(state)]


# ---------------------------------------------------------------------------------------- GSNR


def test_gsnr_follows_cubic_schedule_and_swaps_to_high_gsnr_weights():
    """Gradient signal on a set A of weights before step 500, on a set B after."""
    controller = dynamic.gsnr(start=0.2, end=0.8, churn=0.1)
    assert controller.needs_vitals and controller.drop_to == SEDATED
    params = make_params()
    decide = jit_decide(controller)
    rng = np.random.default_rng(0)

    def signal_set():
        out = []
        for k, s in zip(kernels(params), TARGET, strict=True):
            flat = np.zeros(k.size, np.float32)
            flat[rng.choice(k.size, k.size - round(float(s) * k.size), replace=False)] = 1.0
            out.append(flat.reshape(k.shape))
        return out

    set_a, set_b = signal_set(), signal_set()

    def mu(sets):
        m = jax.tree.map(lambda p: jnp.full_like(p, 0.05), params)
        m["Dense_0"]["kernel"] = jnp.asarray(2.0 * sets[0] + 0.05)
        m["Dense_1"]["kernel"] = jnp.asarray(2.0 * sets[1] + 0.05)
        return m

    @jax.jit
    def advance(v, m, key):
        def body(v, k):
            ks = jax.tree.unflatten(jax.tree.structure(params), list(jax.random.split(k, 3)))
            grads = jax.tree.map(
                lambda p, kk, mm: mm + jax.random.normal(kk, p.shape), params, ks, m
            )
            return vit.update(v, params, grads, decay=0.9), None

        return jax.lax.scan(body, v, jax.random.split(key, EVERY))[0]

    def run(churn):
        v = vit.init(params)
        state, ctrl = init(controller, params, v)
        ctrl = ctrl._replace(churn=jnp.float32(churn))  # traced: no recompilation
        for i, step in enumerate(range(0, T, EVERY)):
            v = advance(v, mu(set_a if step < 500 else set_b), jax.random.PRNGKey(i))
            decision, ctrl = decide(ctrl, state, params, zeros_like(params), v, step)
            state, _ = realise(controller, decision, state, params)
            want = schedules.cubic(step, T, TARGET, 0.2, 0.8)
            np.testing.assert_allclose(decision.sparsity, want, rtol=1e-6)
            np.testing.assert_allclose(layer_sparsity(state), expected(want), atol=1e-6)
            assert decision.churn[0] == np.float32(churn if 200 <= step < 800 else 0.0)
        alive = [s == ALIVE for s in states_of(state)]
        assert all(set(np.unique(s)) <= {ALIVE, SEDATED} for s in states_of(state))
        hits = sum((a & (b > 0)).sum() for a, b in zip(alive, set_b, strict=True))
        return state, hits / sum(a.sum() for a in alive)

    state, hit = run(0.2)
    np.testing.assert_allclose(layer_sparsity(state), expected(TARGET), atol=1e-6)
    _, hit0 = run(0.0)
    # With churn, sedated weights whose GSNR rose come back; without, the set stays A's.
    assert hit > 0.8, hit
    assert hit > hit0 + 0.3, (hit, hit0)


def test_gsnr_scores_are_log1p_of_vitals_gsnr():
    params = make_params()
    controller = dynamic.gsnr()

    @jax.jit
    def vitals_and_gsnr(params):
        v = vit.init(params)
        for i in range(5):
            v = vit.update(
                v, params, jax.tree.map(lambda p, i=i: p * (1 + 0.3 * i) + 0.1 * i, params)
            )
        return v, vit.gsnr(v)

    v, ratio = vitals_and_gsnr(params)
    state, ctrl = init(controller, params, v)
    decision, _ = jit_decide(controller)(ctrl, state, params, zeros_like(params), v, 300)
    for got, r in zip(kernels(decision.drop_score), kernels(ratio), strict=True):
        np.testing.assert_allclose(got, np.log1p(np.asarray(r)), atol=1.1e-3)
    assert decision.drop_score["Dense_0"]["bias"].shape == ()
    obs = observation(params, zeros_like(params), state, None, 300)
    with pytest.raises(ValueError, match="vitals"):
        controller.decide(obs, ctrl)


# ----------------------------------------------------------------------------------------- DSD


def test_dsd_dense_sparse_dense_sparse():
    controller = dynamic.dsd(phases=(0.2, 0.45, 0.6))
    assert controller.regrow_lysed and controller.drop_to == LYSED
    params = make_params()
    state, ctrl = init(controller, params)
    decide = jit_decide(controller)
    rng = np.random.default_rng(1)
    lysed_before = None
    for step in range(0, T, EVERY):
        before = params
        decision, ctrl = decide(ctrl, state, params, zeros_like(params), None, step)
        state, params = realise(controller, decision, state, params)
        sp, states = layer_sparsity(state), states_of(state)
        if step < 200 or 450 <= step < 600:
            assert (sp == 0).all(), (step, sp)
        else:
            np.testing.assert_allclose(sp, expected(TARGET), atol=1e-6, err_msg=f"{step}")
            assert all(set(np.unique(s)) <= {ALIVE, LYSED} for s in states)
            for s, w in zip(states, kernels(params), strict=True):
                assert (np.asarray(w)[s == LYSED] == 0).all()
        if step in (200, 600):  # the pruning surgeries keep the largest magnitudes
            for s, w in zip(states, kernels(before), strict=True):
                mag = np.abs(np.asarray(w))
                assert mag[s == ALIVE].min() >= mag[s == LYSED].max()
        if step == 400:
            lysed_before = [s == LYSED for s in states]
        if step == 450:  # re-dense: every pruned weight regrows, from zero
            for was, w in zip(lysed_before, kernels(params), strict=True):
                assert was.any() and (np.asarray(w)[was] == 0).all()
        # "training": the weights that are not lysed move a little
        params = jax.tree.map(
            lambda p, s: (
                p
                + np.where(np.asarray(s) != LYSED, 0.05 * rng.normal(size=p.shape), 0).astype(
                    np.float32
                )
            ),
            params,
            state,
        )
    np.testing.assert_allclose(layer_sparsity(state), expected(TARGET), atol=1e-6)


# ------------------------------------------------------------------------------------ harmonic


def test_harmonic_schedule_oscillates_stays_in_range_and_ends_at_target():
    steps = np.arange(T + 1)
    fn = jax.jit(jax.vmap(lambda t: dynamic.harmonic_sparsity(t, T, TARGET, 0.2, 0.3, 0.0, 0.8)))
    s = np.asarray(fn(steps))
    assert s.shape == (T + 1, 2)
    assert (s >= 0).all() and (s <= TARGET + 1e-7).all()
    late = steps >= 800
    np.testing.assert_array_equal(s[late], np.broadcast_to(TARGET, s[late].shape))
    d = np.sign(np.diff(s[:800, 0]))
    d = d[d != 0]
    assert np.sum(d[1:] != d[:-1]) >= 5  # rises and falls several times
    assert s[0, 0] == 0 and s[790, 0] < TARGET[0]


def test_harmonic_wakes_sedated_weights_by_magnitude():
    controller = dynamic.harmonic(period=0.2, amplitude=0.5, end=0.8)
    assert controller.drop_to == SEDATED
    params = make_params()
    state, ctrl = init(controller, params)
    decide = jit_decide(controller)
    rng = np.random.default_rng(2)
    woke = 0
    for step in range(0, T, 20):
        old = states_of(state)
        decision, ctrl = decide(ctrl, state, params, zeros_like(params), None, step)
        state, _ = realise(controller, decision, state, params)
        np.testing.assert_allclose(layer_sparsity(state), expected(decision.sparsity), atol=1e-6)
        for o, n, w in zip(old, states_of(state), kernels(params), strict=True):
            mag = np.abs(np.asarray(w))
            wake, still = (o == SEDATED) & (n == ALIVE), (o == SEDATED) & (n == SEDATED)
            woke += wake.sum()
            if wake.any() and still.any():
                assert mag[wake].min() >= mag[still].max()
        # sedated weights keep learning too: everything moves
        params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape), params)
    assert woke > 20
    np.testing.assert_allclose(layer_sparsity(state), expected(TARGET), atol=1e-6)
    assert all(set(np.unique(s)) <= {ALIVE, SEDATED} for s in states_of(state))


# ----------------------------------------------------------------------------------- breathing


def test_breathing_hysteresis_reduces_swaps_and_ends_at_target():
    controller = dynamic.breathing(decay=0.5, hysteresis=0.0, churn=0.1)
    assert controller.drop_to == SEDATED
    params = make_params()
    decide = jit_decide(controller)

    def run(hysteresis):
        state, ctrl = init(controller, params)
        ctrl = ctrl._replace(hysteresis=jnp.float32(hysteresis))  # traced: no recompilation
        rng = np.random.default_rng(3)
        base = jax.tree.map(lambda p: np.abs(rng.normal(size=p.shape)), params)
        swaps = 0
        for step in range(0, T, EVERY):
            noise = jax.tree.map(lambda b: b * rng.lognormal(0.0, 0.5, b.shape), base)
            grads = jax.tree.map(lambda n, p: n / p, noise, params)  # |theta * grad| = noise
            old = states_of(state)
            decision, ctrl = decide(ctrl, state, params, grads, None, step)
            state, _ = realise(controller, decision, state, params)
            np.testing.assert_allclose(
                layer_sparsity(state), expected(decision.sparsity), atol=1e-6
            )
            if step > 200:
                new = states_of(state)
                swaps += sum(
                    ((o == SEDATED) & (n == ALIVE)).sum() for o, n in zip(old, new, strict=True)
                )
        np.testing.assert_allclose(layer_sparsity(state), expected(TARGET), atol=1e-6)
        return swaps

    swaps0, swaps1 = run(0.0), run(0.5)
    assert swaps0 > 20
    assert swaps1 < 0.6 * swaps0, (swaps0, swaps1)


def test_breathing_ema_and_incumbent_bonus():
    controller = dynamic.breathing(decay=0.9, hysteresis=0.25)
    params = make_params()
    state, ctrl = init(controller, params)
    grads = jax.tree.map(lambda p: 2.0 * jnp.ones_like(p), params)
    sedated = np.zeros((16, 12), np.int8)
    sedated[:3] = SEDATED
    state["Dense_0"]["kernel"] = jnp.asarray(sedated)
    decision, new = jit_decide(controller)(ctrl, state, params, grads, None, 500)
    imp = 0.1 * np.abs(2.0 * np.asarray(params["Dense_0"]["kernel"]))
    np.testing.assert_allclose(new.importance["Dense_0"]["kernel"], imp, rtol=1e-6)
    bonus = np.where(sedated == ALIVE, 1.25, 1.0)
    np.testing.assert_allclose(decision.drop_score["Dense_0"]["kernel"], imp * bonus, rtol=1e-6)
    np.testing.assert_allclose(decision.grow_score["Dense_0"]["kernel"], imp * bonus, rtol=1e-6)
    assert new.importance["Dense_0"]["bias"].shape == ()


# ------------------------------------------------------------------- the reference vs operate


def test_reference_realisation_matches_operate():
    """The NumPy rule used above agrees with emrakul.surgery.operate on mixed states + churn."""
    controller = dynamic.breathing(churn=0.2)
    params = make_params(4, shapes={"w": (24, 16), "b": (16,)})
    target = np.array([0.6], np.float32)
    rng = np.random.default_rng(4)
    state, ctrl = init(controller, params, target=target)
    state["w"] = jnp.asarray(rng.choice([ALIVE, SEDATED], size=(24, 16), p=[0.6, 0.4]), jnp.int8)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    obs = observation(params, grads, state, None, 500, target=target)
    decision, _ = controller.decide(obs, ctrl)
    assert decision.churn[0] == np.float32(0.2)
    life = lifecycle.Lifecycle(
        state,
        jax.tree.map(lambda s: jnp.full(jnp.shape(s), NEVER, jnp.int32), state),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1,), jnp.int32),
    )
    surgery = jax.jit(
        lambda life, decision, params: operate(
            life,
            decision,
            params,
            500,
            structures=(Unstructured(),),
            drop_to=controller.drop_to,
            regrow_lysed=controller.regrow_lysed,
            cooldown=0,
        )
    )
    res = surgery(life, decision, params)
    ref_state, _ = realise(controller, decision, state, params)
    np.testing.assert_array_equal(res.life.state["w"], ref_state["w"])
    assert (np.asarray(ref_state["w"]) != np.asarray(state["w"])).sum() > 10  # it did swap


# ------------------------------------------------------------------------------ jit, vmap, errors

FACTORIES = {
    "gsnr": dynamic.gsnr,
    "dsd": dynamic.dsd,
    "harmonic": dynamic.harmonic,
    "breathing": dynamic.breathing,
}


def _setup(name):
    controller = FACTORIES[name]()
    params = make_params()
    v = _toy_vitals(params) if controller.needs_vitals else None
    state, ctrl = init(controller, params, v)
    return controller, params, jax.tree.map(jnp.cos, params), state, v, ctrl


@jax.jit
def _toy_vitals(params):
    v = vit.update(vit.init(params), params, jax.tree.map(lambda p: p + 0.5, params))
    return vit.update(v, params, jax.tree.map(lambda p: 0.5 - p, params))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_decide_batches_over_steps_and_does_not_retrace(name):
    controller, params, grads, state, v, ctrl = _setup(name)

    def decide_fn(step, ctrl):
        return controller.decide(observation(params, grads, state, v, step), ctrl)

    chex.clear_trace_counter()
    decide_at = jax.jit(chex.assert_max_traces(decide_fn, n=1))
    steps = jnp.array([0, 250, 500, 650, 900, T - 1], jnp.int32)
    singles = [decide_at(s, ctrl) for s in steps]  # one trace for every step
    batched = jax.jit(jax.vmap(decide_fn, in_axes=(0, None)))(steps, ctrl)
    for i, (d, new) in enumerate(singles):
        assert d.sparsity.shape == (2,) and d.churn.shape == (2,) and d.operate.shape == ()
        assert (np.asarray(d.sparsity) <= TARGET + 1e-7).all()
        got = jax.tree.map(lambda x, i=i: x[i], batched)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves((d, new)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    last = singles[-1][0]  # every run ends at the target, with no churn
    np.testing.assert_array_equal(last.sparsity, TARGET)
    np.testing.assert_array_equal(last.churn, 0.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: dynamic.gsnr(start=0.8, end=0.2),
        lambda: dynamic.gsnr(churn=1.5),
        lambda: dynamic.gsnr(start=-0.1),
        lambda: dynamic.dsd(phases=(0.5, 0.3, 0.6)),
        lambda: dynamic.dsd(phases=(0.0, 0.3, 0.6)),
        lambda: dynamic.dsd(phases=(0.2, 0.3, 1.0)),
        lambda: dynamic.dsd(phases=(0.2, 0.3)),
        lambda: dynamic.harmonic(amplitude=1.5),
        lambda: dynamic.harmonic(period=0.0),
        lambda: dynamic.harmonic(end=1.2),
        lambda: dynamic.breathing(decay=1.0),
        lambda: dynamic.breathing(hysteresis=-0.1),
        lambda: dynamic.breathing(churn=-0.1),
    ],
)
def test_bad_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_bad_observations_raise():
    controller, params, grads, state, v, ctrl = _setup("breathing")
    with pytest.raises(ValueError, match="target"):
        controller.decide(observation(params, grads, state, v, 0, target=[0.5]), ctrl)
    with pytest.raises(ValueError, match="total_steps"):
        controller.decide(observation(params, grads, state, v, 0, total=0), ctrl)
    with pytest.raises(ValueError, match="structure"):
        controller.decide(observation(params, {"x": grads}, state, v, 0), ctrl)
