"""L0 hard-concrete and variational unit gate controllers: gates, learning, finalisation."""

import functools
from types import SimpleNamespace

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
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

from emrakul.controllers import gates
from emrakul.masks import gumbel_softmax_mask, hard_concrete, hard_concrete_prob_nonzero
from emrakul.surgery.lifecycle import ALIVE, LYSED

KEY = jax.random.PRNGKey(7)
CW, KW, PRIOR, TEMP = 0.2, 0.1, 0.3, 0.7

# Controllers are shared between tests so that their compilations are too; hyperparameters
# that a test changes live in the (traced) controller state.
L0 = gates.l0(init_log_alpha=0.0, finalize=0.8)
UNITS = gates.variational_units(temperature=0.5, init_logit=0.0, finalize=0.8, prior=PRIOR)
# The same controllers with SGD(1) on the gate parameters, so that one learn step reveals the
# gradient. Only their learn is compiled: states are the shared controllers' with the
# optimizer state swapped (every other hyperparameter is a traced field of the state).
L0_SGD = gates.l0(optimizer=optax.sgd(1.0))
UNITS_SGD = gates.variational_units(prior=PRIOR, optimizer=optax.sgd(1.0))


def with_sgd(ctrl, gate_params):
    return ctrl._replace(opt_state=optax.sgd(1.0).init(gate_params))


@functools.cache
def jitted(controller):
    """Compiled functions of a controller, shared by every test that uses it. Each is traced
    once at most: every test calls them with the same shapes and a Python int step, and a new
    step value must not retrace."""
    once = functools.partial(chex.assert_max_traces, n=1)
    return SimpleNamespace(
        gates=jax.jit(once(controller.gates)),
        learn=jax.jit(once(controller.learn)),
        penalty=jax.jit(once(controller.penalty)),
        decide=jit_decide(controller),
    )


def gate_tree(params, gate_params, sample):
    """The documented sampling rule, written out: one ``sample(KEY, x)`` over the concatenated
    gate parameters of the kernels, split back and broadcast over each kernel; 1 for biases."""
    parts = kernels(gate_params)
    z = sample(KEY, jnp.concatenate([g.ravel() for g in parts]))
    cut = parts[0].size
    z0, z1 = z[:cut].reshape(parts[0].shape), z[cut:].reshape(parts[1].shape)
    shapes = [p.shape for p in kernels(params)]
    return {
        "Dense_0": {"bias": jnp.float32(1.0), "kernel": jnp.broadcast_to(z0, shapes[0])},
        "Dense_1": {"kernel": jnp.broadcast_to(z1, shapes[1])},
    }


def times(params, gate):
    return jax.tree.map(lambda p, g: p * g, params, gate)


def quadratic(weights, centre):
    """A toy loss ``0.5 * sum(weights * (w - centre)^2)`` over every leaf."""

    def loss(eff):
        terms = jax.tree.map(lambda e, a, c: 0.5 * jnp.sum(a * (e - c) ** 2), eff, weights, centre)
        return sum(jax.tree.leaves(terms))

    return loss


def toy_problem(params, seed=0):
    rng = np.random.default_rng(seed)
    weights = jax.tree.map(lambda p: jnp.asarray(rng.uniform(0.5, 2.0, p.shape), p.dtype), params)
    centre = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    return quadratic(weights, centre)


def away_from_zero(params):
    """|theta| >= 0.5, so that every weight's gate matters to a loss that involves it."""
    return jax.tree.map(lambda p: jnp.sign(p) * (0.5 + jnp.abs(p)), params)


def train(controller, ctrl, params, loss, steps, **hyper):
    """``steps`` learn steps on ``loss(theta * gates)`` (theta fixed), one compiled scan."""
    lr = hyper.pop("lr")
    opt = ctrl.opt_state  # the learning rate is traced too (optax.inject_hyperparams)
    opt = opt._replace(hyperparams={**opt.hyperparams, "learning_rate": jnp.float32(lr)})
    ctrl = ctrl._replace(opt_state=opt, **{k: jnp.float32(v) for k, v in hyper.items()})

    @jax.jit
    def run(ctrl):
        def body(ctrl, t):
            key = jax.random.fold_in(KEY, t)
            g = controller.gates(ctrl, params, key)
            grads = jax.grad(loss)(times(params, g))
            return controller.learn(ctrl, params, grads, key, t), None

        return jax.lax.scan(body, ctrl, jnp.arange(steps))[0]

    return ctrl, run(ctrl)


# ------------------------------------------------------------------------------------------ L0


def test_l0_gates_are_hard_concrete_samples_then_exactly_one():
    f = jitted(L0)
    params = make_params()
    state, ctrl = init(L0, params)
    assert L0.drop_to == LYSED and not L0.regrow_lysed
    g = f.gates(ctrl, params, KEY)
    assert g["Dense_0"]["bias"].shape == () and float(g["Dense_0"]["bias"]) == 1.0
    for got in kernels(g):  # (that they are hard_concrete samples: see the gradient test)
        got = np.asarray(got)
        assert got.min() == 0.0 and got.max() == 1.0  # exact zeros and ones
        assert ((got > 0) & (got < 1)).any()

    zeros = jax.tree.map(jnp.zeros_like, params)
    ones = jax.tree.map(jnp.ones_like, params)
    d, ctrl = f.decide(ctrl, state, params, zeros, None, 790)
    assert not bool(d.operate) and not bool(ctrl.done)
    moved = f.learn(ctrl, params, ones, KEY, 790)
    assert not np.allclose(
        moved.log_alpha["Dense_0"]["kernel"], ctrl.log_alpha["Dense_0"]["kernel"]
    )
    stalled = f.learn(ctrl, params, ones, KEY, 800)  # past finalize * T: no more learning
    chex.assert_trees_all_equal(stalled.log_alpha, ctrl.log_alpha)

    d, ctrl = f.decide(ctrl, state, params, zeros, None, 800)
    assert bool(d.operate) and bool(ctrl.done)
    np.testing.assert_array_equal(d.sparsity, TARGET)
    chex.assert_trees_all_equal(d.drop_score, ctrl.log_alpha)
    state, params = realise(L0, d, state, params)
    np.testing.assert_allclose(layer_sparsity(state), expected(TARGET), atol=1e-6)
    for s, a in zip(kernels(state), kernels(ctrl.log_alpha), strict=True):
        s, a = np.asarray(s), np.asarray(a)
        assert a[s == ALIVE].min() >= a[s == LYSED].max()  # the largest log_alpha survive
    for leaf in jax.tree.leaves(f.gates(ctrl, params, KEY)):
        np.testing.assert_array_equal(leaf, 1.0)
    assert float(f.penalty(ctrl)) == 0.0
    chex.assert_trees_all_equal(f.learn(ctrl, params, ones, KEY, 10).log_alpha, ctrl.log_alpha)
    d, _ = f.decide(ctrl, state, params, zeros, None, 850)
    assert not bool(d.operate)  # once only


def test_l0_learn_gradient_and_penalty_match_autodiff():
    f = jitted(L0)
    params = make_params(1)
    _, ctrl = init(L0, params)
    ctrl = ctrl._replace(l0_weight=jnp.float32(0.3))
    loss = toy_problem(params)
    g = f.gates(ctrl, params, KEY)
    grads = jax.grad(loss)(times(params, g))
    sgd = with_sgd(ctrl, ctrl.log_alpha)
    new = jax.jit(L0_SGD.learn)(sgd, params, grads, KEY, 0)  # SGD(1): new = old - gradient
    n = sum(p.size for p in kernels(params))

    def penalty(log_alpha):
        return 0.3 * sum(jnp.sum(hard_concrete_prob_nonzero(a)) for a in kernels(log_alpha)) / n

    @jax.jit
    @functools.partial(jax.grad, has_aux=True)
    def direct(log_alpha):
        z = gate_tree(params, log_alpha, hard_concrete)
        return loss(times(params, z)) + penalty(log_alpha), z

    want, z = direct(ctrl.log_alpha)
    chex.assert_trees_all_close(g, z, atol=1e-6)  # gates follow the documented rule
    olds, news, refs = kernels(ctrl.log_alpha), kernels(new.log_alpha), kernels(want)
    for old, upd, ref in zip(olds, news, refs, strict=True):
        np.testing.assert_allclose(np.asarray(old) - np.asarray(upd), ref, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(refs[0])).max() > 1e-3  # a non-trivial check
    assert float(new.log_alpha["Dense_0"]["bias"]) == 0.0  # markers untouched
    np.testing.assert_allclose(f.penalty(ctrl), penalty(ctrl.log_alpha), rtol=1e-5)


def test_l0_learn_opens_relevant_gates_and_closes_irrelevant_ones():
    params = away_from_zero(make_params(2, shapes={"w": (16, 8), "b": (8,)}))
    relevant = np.zeros(128, np.float32)
    relevant[np.random.default_rng(0).permutation(128)[:64]] = 1.0
    relevant = relevant.reshape(16, 8)
    # the loss wants the relevant weights at their current value and ignores the others
    loss = quadratic({"w": jnp.asarray(relevant), "b": 0.0}, params)
    target = np.array([0.5], np.float32)
    state, ctrl = init(L0, params, target=target)
    start, end = train(L0, ctrl, params, loss, 300, l0_weight=1.0, lr=0.05)
    la0, la = np.asarray(start.log_alpha["w"]), np.asarray(end.log_alpha["w"])
    assert la[relevant > 0].mean() > la0[relevant > 0].mean() + 1.0
    assert la[relevant == 0].mean() < la0[relevant == 0].mean() - 1.0
    assert la[relevant > 0].min() > la[relevant == 0].max()  # perfectly separated
    assert float(L0.penalty(end)) < float(L0.penalty(start))
    # finalising at the fraction of irrelevant weights keeps exactly the relevant ones
    d, _ = L0.decide(observation(params, params, state, None, 800, target=target), end)
    new, _ = realise(L0, d, state, params)
    np.testing.assert_array_equal(np.asarray(new["w"]) == ALIVE, relevant > 0)


# ---------------------------------------------------------------------------- variational units


def test_variational_unit_gates_and_finalisation():
    f = jitted(UNITS)
    params = make_params()
    state, ctrl = init(UNITS, params)
    assert ctrl.logits["Dense_0"]["kernel"].shape == (12,)
    np.testing.assert_array_equal(ctrl.cost["Dense_0"]["kernel"], np.full(12, 16.0))
    np.testing.assert_array_equal(ctrl.cost["Dense_1"]["kernel"], np.full(10, 12.0))
    g = f.gates(ctrl, params, KEY)
    assert g["Dense_0"]["bias"].shape == ()
    for got in kernels(g):  # (that they are Gumbel-softmax samples: see the gradient test)
        got = np.asarray(got)
        assert (got == got[:1]).all()  # one gate per unit, broadcast over its fan-in
        assert set(np.unique(got)) == {0.0, 1.0}

    zeros = jax.tree.map(jnp.zeros_like, params)
    d, _ = f.decide(ctrl, state, params, zeros, None, 799)
    assert not bool(d.operate)
    d, done = f.decide(ctrl, state, params, zeros, None, 800)
    assert bool(d.operate) and bool(done.done)
    scores, logits = kernels(d.drop_score), kernels(ctrl.logits)
    for s, lg, p in zip(scores, logits, kernels(params), strict=True):
        np.testing.assert_allclose(s, jax.nn.sigmoid(lg) * (np.abs(p) + 1e-8), rtol=1e-6)
    unstructured, _ = realise(UNITS, d, state, params)
    np.testing.assert_allclose(layer_sparsity(unstructured), expected(TARGET), atol=1e-6)
    units, _ = realise(UNITS, d, state, params, units=-1)
    np.testing.assert_allclose(layer_sparsity(units), expected(TARGET, (12, 10)), atol=1e-6)
    for s, score in zip(kernels(units), scores, strict=True):
        s = np.asarray(s)
        assert (s == s[:1]).all()  # whole units
        per_unit = np.asarray(score).sum(axis=0)
        assert per_unit[s[0] == ALIVE].min() >= per_unit[s[0] == LYSED].max()
    for leaf in jax.tree.leaves(f.gates(done, params, KEY)):
        np.testing.assert_array_equal(leaf, 1.0)
    assert float(f.penalty(done)) == 0.0


def test_variational_learn_gradient_and_penalty_match_autodiff():
    f = jitted(UNITS)
    params = make_params(3)
    _, ctrl = init(UNITS, params)
    hyper = {"complexity_weight": CW, "kl_weight": KW, "temperature": TEMP}
    ctrl = ctrl._replace(**{k: jnp.float32(v) for k, v in hyper.items()})
    loss = toy_problem(params, 1)
    g = f.gates(ctrl, params, KEY)
    grads = jax.grad(loss)(times(params, g))
    sgd = with_sgd(ctrl, ctrl.logits)
    new = jax.jit(UNITS_SGD.learn)(sgd, params, grads, KEY, 0)  # SGD(1): new = old - gradient

    def penalty(logits):
        num, den = 0.0, 0.0
        for lg, p in zip(kernels(logits), kernels(params), strict=True):
            q = jax.nn.sigmoid(lg)
            kl = q * jnp.log(q / PRIOR) + (1 - q) * jnp.log((1 - q) / (1 - PRIOR))
            c = p.size / p.shape[-1]  # the fan-in
            num, den = num + c * jnp.sum(CW * q + KW * kl), den + c * q.size
        return num / den

    @jax.jit
    @functools.partial(jax.grad, has_aux=True)
    def direct(logits):
        z = gate_tree(params, logits, lambda k, x: gumbel_softmax_mask(k, x, TEMP))
        return loss(times(params, z)) + penalty(logits), z

    want, z = direct(ctrl.logits)
    chex.assert_trees_all_equal(g, z)  # gates follow the documented rule
    olds, news, refs = kernels(ctrl.logits), kernels(new.logits), kernels(want)
    for old, upd, ref in zip(olds, news, refs, strict=True):
        np.testing.assert_allclose(np.asarray(old) - np.asarray(upd), ref, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(refs[0])).max() > 1e-3
    np.testing.assert_allclose(f.penalty(ctrl), penalty(ctrl.logits), rtol=1e-5)

    # cost weighting: all of layer 0 on, all of layer 1 off
    logits = {
        "Dense_0": {"bias": jnp.float32(0), "kernel": jnp.full((12,), 30.0, jnp.float32)},
        "Dense_1": {"kernel": jnp.full((10,), -30.0, jnp.float32)},
    }
    on_off = ctrl._replace(logits=logits, kl_weight=jnp.float32(0.0))
    np.testing.assert_allclose(f.penalty(on_off), CW * 192 / (192 + 120), rtol=1e-5)


def test_variational_learn_keeps_units_that_matter():
    params = away_from_zero(make_params(4, shapes={"w": (6, 8), "b": (8,)}))
    relevant = np.array([1, 0, 1, 0, 0, 1, 1, 0], np.float32)
    loss = quadratic({"w": jnp.broadcast_to(jnp.asarray(relevant), (6, 8)), "b": 0.0}, params)
    _, ctrl = init(UNITS, params, target=np.array([0.5], np.float32))
    start, end = train(UNITS, ctrl, params, loss, 300, complexity_weight=1.0, lr=0.05)
    lg = np.asarray(end.logits["w"])
    assert lg[relevant > 0].min() > 1.0 and lg[relevant == 0].max() < -1.0, lg
    assert float(UNITS.penalty(end)) < float(UNITS.penalty(start))


# ------------------------------------------------------------------------------ jit, vmap, errors

CONTROLLERS = {"l0": L0, "variational_units": UNITS}
FACTORIES = {"l0": gates.l0, "variational_units": gates.variational_units}


@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_batches_over_keys_and_states_without_retracing(name):
    controller = CONTROLLERS[name]
    f = jitted(controller)
    params = make_params()
    state, ctrl = init(controller, params)
    grads = jax.tree.map(jnp.cos, params)

    def learn_fn(ctrl, key, step):
        return controller.learn(ctrl, params, grads, key, step)

    def decide_fn(ctrl, step):
        return controller.decide(observation(params, grads, state, None, step), ctrl)

    chex.clear_trace_counter()
    decide_at = jax.jit(chex.assert_max_traces(decide_fn, n=1))
    for step in (0, 10, 799, 800, 900):  # f.learn is wrapped in chex.assert_max_traces too
        f.learn(ctrl, params, grads, KEY, step)
        decide_at(ctrl, step)

    # a population of runs: one key and one controller state per member
    keys = jax.random.split(KEY, 3)
    states = jax.tree.map(lambda x: jnp.stack([x, x, x]), ctrl)
    states = states._replace(done=jnp.array([False, False, True]))

    @jax.jit
    @jax.vmap
    def population(ctrl, key):
        learned = learn_fn(ctrl, key, 3)
        obs = observation(params, grads, state, None, 900)
        return controller.gates(ctrl, params, key), learned, controller.decide(obs, learned)

    g, learned, (decision, _) = population(states, keys)
    assert decision.operate.shape == (3,) and bool(decision.operate[:2].all())
    for i, k in enumerate(keys):
        one = jax.tree.map(lambda x, i=i: x[i], states)
        member = jax.tree.map(lambda x, i=i: x[i], (g, learned))
        chex.assert_trees_all_close(member[0], f.gates(one, params, k))
        chex.assert_trees_all_close(
            member[1], f.learn(one, params, grads, k, 3), rtol=1e-5, atol=1e-6
        )
    for leaf in jax.tree.leaves(jax.tree.map(lambda x: x[2], g)):  # the finalised member
        np.testing.assert_array_equal(leaf, 1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gates.l0(finalize=1.5),
        lambda: gates.l0(finalize=0.0),
        lambda: gates.l0(l0_weight=-1.0),
        lambda: gates.l0(lr=0.0),
        lambda: gates.l0(init_log_alpha=float("nan")),
        lambda: gates.variational_units(temperature=0.0),
        lambda: gates.variational_units(complexity_weight=-0.1),
        lambda: gates.variational_units(prior=1.0),
        lambda: gates.variational_units(kl_weight=-1.0),
        lambda: gates.variational_units(finalize=2.0),
    ],
)
def test_bad_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_bad_inputs_raise(name):
    controller = CONTROLLERS[name]
    params = make_params()
    state, ctrl = init(controller, params)
    with pytest.raises(TypeError, match="optax"):
        FACTORIES[name](optimizer="adam")
    with pytest.raises(ValueError, match="structure"):
        controller.gates(ctrl, {"x": params}, KEY)
    shapes = {"Dense_0": {"kernel": (16, 13), "bias": (12,)}, "Dense_1": {"kernel": (12, 10)}}
    other = make_params(shapes=shapes)
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        controller.gates(ctrl, other, KEY)
    with pytest.raises(ValueError, match="grads leaf 'Dense_0/kernel'"):
        controller.learn(ctrl, params, other, KEY, 0)
    with pytest.raises(ValueError, match="target"):
        controller.decide(observation(params, params, state, None, 0, target=[0.5]), ctrl)
    with pytest.raises(ValueError, match="total_steps"):
        controller.init(params, observation(params, params, state, None, 0, total=0), KEY)
