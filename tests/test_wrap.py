"""emrakul.wrap: the optax wrapper's lifecycle semantics, straight-through gradients, no retrace."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emrakul
from emrakul import controllers
from emrakul.surgery.lifecycle import ALIVE, LYSED, SEDATED


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(4)(x)


def setup(controller, steps=200, **kw):
    net = Net()
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (64, 8))
    y = jax.random.randint(jax.random.PRNGKey(1), (64,), 0, 4)
    params = net.init(key, x)["params"]
    tx = emrakul.wrap(optax.adam(1e-2), controller, total_steps=steps, **kw)
    state = tx.init(params)

    def loss_fn(p, s):
        logits = net.apply({"params": emrakul.masked(p, s)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p, s)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    return params, state, step, loss_fn


def test_gmp_reaches_target_and_lysed_weights_are_zero_and_frozen():
    params, state, step, _ = setup(controllers.gmp(0.2, 0.6), steps=200, sparsity=0.8, every=10)
    for _ in range(200):
        params, state, loss = step(params, state)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(emrakul.sparsity(state)), 0.8, atol=1e-3)
    for name in ["Dense_0", "Dense_1"]:
        life = np.asarray(state.life.state[name]["kernel"])
        w = np.asarray(params[name]["kernel"])
        assert (w[life == LYSED] == 0).all()
        assert (w[life == ALIVE] != 0).any()
    # Biases are not pruned (scalar markers) and keep learning.
    assert np.ndim(state.life.state["Dense_0"]["bias"]) == 0
    frozen = params
    params2, state2, _ = step(params, state)
    for name in ["Dense_0", "Dense_1"]:
        life = np.asarray(state2.life.state[name]["kernel"])
        before = np.asarray(frozen[name]["kernel"])[life == LYSED]
        after = np.asarray(params2[name]["kernel"])[life == LYSED]
        np.testing.assert_array_equal(before, after)


def test_masked_is_straight_through():
    params, state, step, loss_fn = setup(controllers.one_shot(0.0), steps=100, sparsity=0.5)
    params, state, _ = step(params, state)  # first call: surgery at step 0 prunes to 50%
    life = state.life.state["Dense_0"]["kernel"]
    assert float(jnp.mean(life != ALIVE)) == pytest.approx(0.5, abs=0.01)
    g = jax.grad(loss_fn)(params, state)["Dense_0"]["kernel"]
    # Dense gradient: non-zero also where the weight is not in the forward pass.
    assert float(jnp.abs(jnp.where(life != ALIVE, g, 0)).sum()) > 0
    eff = emrakul.masked(params, state)["Dense_0"]["kernel"]
    assert float(jnp.abs(jnp.where(life != ALIVE, eff, 0)).sum()) == 0


def test_sedated_weights_keep_learning():
    # harmonic sedates: sedated weights are zero in the forward pass but their theta changes.
    params, state, step, _ = setup(controllers.harmonic(), steps=300, sparsity=0.7, every=10)
    for _ in range(120):
        params, state, _ = step(params, state)
    life = np.asarray(state.life.state["Dense_0"]["kernel"])
    assert (life == SEDATED).any() and not (life == LYSED).any()
    before = np.asarray(params["Dense_0"]["kernel"])
    params2, state2, _ = step(params, state)
    still = (life == SEDATED) & (np.asarray(state2.life.state["Dense_0"]["kernel"]) == SEDATED)
    after = np.asarray(params2["Dense_0"]["kernel"])
    assert (before[still] != after[still]).mean() > 0.5


def test_rigl_regrowth_resets_moments_and_keeps_sparsity():
    params, state, step, _ = setup(controllers.rigl(0.5, 0.9), steps=200, sparsity=0.75, every=5)
    for i in range(60):
        prev = state.life.state["Dense_0"]["kernel"]
        params, state, _ = step(params, state)
        np.testing.assert_allclose(float(emrakul.sparsity(state)), 0.75, atol=2e-3)
        if i > 0 and i % 5 == 0:
            life = state.life.state["Dense_0"]["kernel"]
            grown = (prev != ALIVE) & (life == ALIVE)
            if bool(grown.any()):
                # Regrown weights restart from zero (they were lysed) ...
                w = params["Dense_0"]["kernel"]
                mu = state.inner[0].mu["Dense_0"]["kernel"]
                assert np.isfinite(np.asarray(w)).all()
                # ... and their Adam moments were reset before this step's update, so the
                # first moment equals (1 - b1) * g for them: far smaller than for old weights.
                assert float(jnp.abs(jnp.where(grown, mu, 0)).max()) < 1.0
    assert int(state.life.changes.sum()) > 0


def test_surgery_schedule_and_knobs_do_not_retrace():
    net = Net()
    params = net.init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]
    tx = emrakul.wrap(optax.sgd(0.1), controllers.gmp(), total_steps=100, every=10)
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def update(g, s, p):
        return tx.update(g, s, p)

    g = jax.tree.map(jnp.ones_like, params)
    for i in range(25):
        if i == 12:  # change the budget, the cooldown and the interval: traced, no retrace
            knobs = state.knobs._replace(
                target=state.knobs.target * 0.5, cooldown=jnp.int32(3), every=jnp.int32(5)
            )
            state = state._replace(knobs=knobs)
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    assert int(state.step) == 25


def test_works_inside_optax_chain_and_with_sgd():
    params = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]
    net = Net()
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        emrakul.wrap(
            optax.sgd(0.1), controllers.gmp(0.0, 0.5), total_steps=50, sparsity=0.5, every=5
        ),
    )
    s = tx.init(params)
    x = jnp.ones((4, 8))

    @jax.jit
    def step(params, s):
        g = jax.grad(lambda p: net.apply({"params": emrakul.masked(p, s)}, x).sum())(params)
        u, s = tx.update(g, s, params)
        return optax.apply_updates(params, u), s

    for _ in range(30):
        params, s = step(params, s)
    assert float(emrakul.sparsity(s)) > 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="sparsity must lie"):
        emrakul.wrap(optax.sgd(1.0), controllers.gmp(), total_steps=10, sparsity=1.0)
    with pytest.raises(ValueError, match="every"):
        emrakul.wrap(optax.sgd(1.0), controllers.gmp(), total_steps=10, every=0)
    with pytest.raises(TypeError, match="Controller"):
        emrakul.wrap(optax.sgd(1.0), "gmp", total_steps=10)
    with pytest.raises(TypeError, match="unknown sparsity structure"):
        emrakul.wrap(optax.sgd(1.0), controllers.gmp(), total_steps=10, structure="nm")
    tx = emrakul.wrap(optax.sgd(1.0), controllers.gmp(), total_steps=10)
    with pytest.raises(ValueError, match="no leaf to prune"):
        tx.init({"bias": jnp.ones(3)})
    with pytest.raises(ValueError, match="needs params"):
        state = tx.init({"kernel": jnp.ones((3, 3))})
        tx.update({"kernel": jnp.ones((3, 3))}, state)


def test_anesthesia_damps_a_layer_after_a_large_cut_and_recovers():
    params, state, step, _ = setup(
        controllers.one_shot(0.1),
        steps=100,
        sparsity=0.8,
        every=10,
        anesthesia_threshold=0.5,
        anesthesia_depth=0.1,
        anesthesia_recovery=0.1,
    )
    for _ in range(10):
        params, state, _ = step(params, state)
    np.testing.assert_allclose(np.asarray(state.lr_scale), 1.0)
    params, state, _ = step(params, state)  # step 10: the one-shot cut of 80%
    np.testing.assert_allclose(np.asarray(state.last_cut), 0.8, atol=5e-3)
    np.testing.assert_allclose(np.asarray(state.lr_scale), 1 - 0.9 * 0.9, rtol=1e-5)
    for _ in range(20):
        params, state, _ = step(params, state)
    assert (np.asarray(state.lr_scale) > 0.85).all()


@pytest.mark.parametrize(
    "structure,check",
    [
        (emrakul.masks.NM(None, 4, -2), "nm"),
        (emrakul.masks.Units(-1), "units"),
    ],
)
def test_structured_pruning_through_the_wrapper(structure, check):
    params, state, step, _ = setup(
        controllers.gmp(0.0, 0.5), steps=100, sparsity=0.5, every=10, structure=structure
    )
    for _ in range(60):
        params, state, _ = step(params, state)
    alive = np.asarray(state.life.state["Dense_0"]["kernel"]) == ALIVE  # [8, 32]
    if check == "nm":
        assert bool(emrakul.masks.is_nm(alive, 2, 4, axis=0, exact=True))
    else:
        per_unit = alive.mean(axis=0)
        assert set(np.unique(per_unit)) <= {0.0, 1.0}
        assert per_unit.mean() == pytest.approx(0.5)


def test_health_tracks_the_loss_and_validation_accuracy():
    """``value`` feeds bias-corrected loss EMAs (fast 0.9, slow 0.99); ``val_accuracy`` is
    kept until replaced; non-finite losses are skipped."""
    from emrakul.wrapper import health_vector

    base = controllers.make("gmp")
    params = Net().init(jax.random.PRNGKey(0), jnp.zeros((1, 8)))["params"]
    tx = emrakul.wrap(optax.adam(1e-2), base, total_steps=10, every=5)
    state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    losses = [2.0, 1.5, float("nan"), 1.0]
    fast = slow = 0.0
    n = 0
    for i, v in enumerate(losses):
        _, state = tx.update(grads, state, params, value=v, val_accuracy=0.5 if i == 1 else None)
        if np.isfinite(v):
            fast, slow, n = 0.9 * fast + 0.1 * v, 0.99 * slow + 0.01 * v, n + 1
    h = np.asarray(health_vector(state.health))
    f, s = fast / (1 - 0.9**n), slow / (1 - 0.99**n)
    np.testing.assert_allclose(h, [f, (f - s) / s, 0.5], rtol=1e-5, atol=1e-5)
    assert np.asarray(health_vector(tx.init(params).health)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="scalar"):
        tx.update(grads, state, params, value=jnp.ones(3))


def test_activations_reach_the_controller_as_a_params_tree():
    net = Net()
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 8))
    params = net.init(jax.random.PRNGKey(0), x)["params"]
    stats = emrakul.vitals.activation_stats(net, {"params": params}, x)
    base = controllers.make("gmp")

    def decide(obs, state):
        decision, _ = base.decide(obs, state[1])
        return decision, (obs.activations, state[1])

    def init(p, obs, key=None):
        return (jax.tree.map(lambda a: jnp.zeros(jnp.shape(a)[-1:]), p), base.init(p, obs, key))

    tx = emrakul.wrap(optax.adam(1e-2), base._replace(init=init, decide=decide), total_steps=10)
    state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    _, state = tx.update(grads, state, params, surgery=True, activations=stats)
    got = state.controller[0]
    np.testing.assert_allclose(got["Dense_0"]["kernel"], stats["Dense_0"].dormant_score)
    np.testing.assert_allclose(got["Dense_1"]["kernel"], stats["Dense_1"].dormant_score)
    assert jnp.shape(got["Dense_0"]["bias"]) == ()  # placeholder where nothing is measured
    bad = {"Dense_0": stats["Dense_1"]._replace(dormant_score=jnp.ones(3))}
    with pytest.raises(ValueError, match="units"):
        emrakul.vitals.activation_tree(params, bad)
