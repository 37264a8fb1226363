"""Tests of the DQN host: replay buffer, TD loss, Conv2D, Q-networks and the compiled program."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emrakul
from emrakul.export import dependency_graph
from emrakul.lab.hosts import dqn, replay
from emrakul.lab.hosts.rl_nets import Conv2D, ImpalaQNetwork, MinAtarQNetwork, MLPQNetwork

# ---------------------------------------------------------------------------------------------
# Replay buffer


def _transitions(ids) -> dict[str, jax.Array]:
    ids = jnp.asarray(ids, jnp.int32)
    return {"id": ids, "obs": jnp.broadcast_to(ids[:, None, None], (ids.shape[0], 2, 3)) * 1.0}


def _example() -> dict[str, jax.Array]:
    return {"id": jnp.int32(0), "obs": jnp.zeros((2, 3), jnp.float32)}


def test_replay_shapes_and_sampling_covers_only_filled_slots():
    state = replay.init(10, _example())
    assert state.storage["obs"].shape == (10, 2, 3) and state.storage["id"].dtype == jnp.int32
    state = replay.add(state, _transitions([7, 8, 9]))
    assert int(replay.size(state)) == 3 and int(state.position) == 3
    assert bool(replay.can_sample(state, 3)) and not bool(replay.can_sample(state, 4))
    batch = replay.sample(state, jax.random.PRNGKey(0), 512)
    assert batch["id"].shape == (512,) and batch["obs"].shape == (512, 2, 3)
    ids = np.asarray(batch["id"])
    assert set(ids.tolist()) == {7, 8, 9}  # uniform over filled slots: all seen, no empty slot
    np.testing.assert_array_equal(np.asarray(batch["obs"])[:, 0, 0], ids)


def test_replay_wraps_around_and_overwrites_oldest():
    state = replay.init(5, _example())
    state = replay.add(state, _transitions([0, 1, 2]))
    state = replay.add(state, _transitions([3, 4, 5, 6]))
    assert int(state.size) == 5 and int(state.position) == 2
    np.testing.assert_array_equal(np.asarray(state.storage["id"]), [5, 6, 2, 3, 4])
    ids = set(np.asarray(replay.sample(state, jax.random.PRNGKey(1), 1000)["id"]).tolist())
    assert ids == {2, 3, 4, 5, 6}


def test_replay_under_jit_and_vmap():
    state = jax.vmap(lambda _: replay.init(4, _example()))(jnp.arange(3))
    batch = jax.vmap(_transitions)(jnp.arange(6).reshape(3, 2))
    add = jax.jit(jax.vmap(replay.add))
    state = add(add(add(state, batch), batch), batch)
    np.testing.assert_array_equal(np.asarray(state.size), [4, 4, 4])
    np.testing.assert_array_equal(np.asarray(state.storage["id"][1]), [2, 3, 2, 3])
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    out = jax.jit(jax.vmap(replay.sample, in_axes=(0, 0, None)), static_argnums=2)(state, keys, 8)
    assert out["obs"].shape == (3, 8, 2, 3)


def test_replay_errors():
    with pytest.raises(ValueError, match="capacity"):
        replay.init(0, _example())
    state = replay.init(2, _example())
    with pytest.raises(ValueError, match="capacity"):
        replay.add(state, _transitions([0, 1, 2]))
    with pytest.raises(ValueError, match="batch_size"):
        replay.sample(state, jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="structure"):
        replay.add(state, {"id": jnp.zeros((1,), jnp.int32)})
    with pytest.raises(ValueError, match="shape"):
        replay.add(state, {"id": jnp.zeros((1,), jnp.int32), "obs": jnp.zeros((1, 3, 2))})


# ---------------------------------------------------------------------------------------------
# TD loss


def _numpy_td_loss(q_tm1, a, r, done, gamma, q_t, delta):
    target = r + gamma * (1.0 - done) * q_t.max(axis=1)
    td = target - q_tm1[np.arange(len(a)), a]
    quad = np.minimum(np.abs(td), delta)
    return np.mean(0.5 * quad**2 + delta * (np.abs(td) - quad))


@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_td_loss_matches_numpy(rng, delta):
    b, num_actions, gamma = 16, 3, 0.97
    q_tm1 = rng.normal(size=(b, num_actions)).astype(np.float32) * 2
    q_t = rng.normal(size=(b, num_actions)).astype(np.float32) * 2
    a = rng.integers(0, num_actions, b).astype(np.int32)
    r = rng.normal(size=b).astype(np.float32)
    done = (rng.random(b) < 0.3).astype(np.float32)
    expected = _numpy_td_loss(q_tm1, a, r, done, gamma, q_t, delta)
    loss = jax.jit(dqn.td_loss, static_argnums=5)(q_tm1, a, r, gamma * (1 - done), q_t, delta)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    stack = lambda x: np.stack([x, x[::-1]])
    batched = jax.vmap(dqn.td_loss, in_axes=(0, 0, 0, 0, 0, None))(
        stack(q_tm1), stack(a), stack(r), stack(gamma * (1 - done)), stack(q_t), delta
    )
    expected_rev = _numpy_td_loss(
        q_tm1[::-1], a[::-1], r[::-1], done[::-1], gamma, q_t[::-1], delta
    )
    np.testing.assert_allclose(batched, [expected, expected_rev], rtol=1e-5)


def test_td_loss_gradient_does_not_flow_into_target():
    q_tm1, q_t = jnp.ones((2, 2)), jnp.full((2, 2), 3.0)
    a, r, d = jnp.array([0, 1]), jnp.zeros(2), jnp.ones(2)
    g_t = jax.grad(lambda q: dqn.td_loss(q_tm1, a, r, d, q))(q_t)
    np.testing.assert_array_equal(g_t, 0.0)
    with pytest.raises(ValueError, match="a_tm1"):
        dqn.td_loss(q_tm1, jnp.array([0]), r, d, q_t)


# ---------------------------------------------------------------------------------------------
# Networks


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_conv2d_equals_flax_conv(rng, padding):
    for _ in range(3):
        kh, kw = (int(k) for k in rng.integers(1, 4, 2))
        h, w = int(rng.integers(kh, 9)), int(rng.integers(kw, 9))
        cin, cout, b = (int(v) for v in rng.integers(1, 6, 3))
        x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
        ours = Conv2D(cout, (kh, kw), padding=padding)
        ref = nn.Conv(cout, (kh, kw), padding=padding)
        params = ours.init(jax.random.PRNGKey(int(rng.integers(1000))), x)
        params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias
        assert jax.tree.map(jnp.shape, params) == jax.tree.map(
            jnp.shape, ref.init(jax.random.PRNGKey(0), x)
        )
        expected = ref.apply(params, x)
        np.testing.assert_allclose(jax.jit(ours.apply)(params, x), expected, atol=1e-5)
        # vmapped over a population of params and inputs (unbatched images inside).
        pop = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
        xs = jnp.stack([x[0], x[-1]])
        got = jax.jit(jax.vmap(ours.apply))(pop, xs)
        want = jax.vmap(lambda p, xi, ref=ref: ref.apply(p, xi[None])[0])(pop, xs)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_conv2d_errors():
    with pytest.raises(ValueError, match="padding"):
        Conv2D(4, 3, padding="FULL").init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 2)))
    with pytest.raises(ValueError, match="VALID"):
        Conv2D(4, 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 5, 2)))


@pytest.mark.parametrize(
    "width,pooling,flat", [(1, "flatten", 8 * 8 * 16), (2, "flatten", 8 * 8 * 32), (2, "gap", 32)]
)
def test_minatar_network_shapes(width, pooling, flat):
    net = MinAtarQNetwork(num_actions=6, width=width, pooling=pooling)
    obs = jnp.zeros((5, 10, 10, 4))
    params = net.init(jax.random.PRNGKey(0), obs)["params"]
    assert params["Conv2D_0"]["kernel"].shape == (3, 3, 4, 16 * width)
    assert params["Dense_0"]["kernel"].shape == (flat, 128 * width)
    assert params["Dense_1"]["kernel"].shape == (128 * width, 6)
    assert net.apply({"params": params}, obs).shape == (5, 6)
    assert net.apply({"params": params}, obs[0]).shape == (6,)
    # the default pruning filter finds the three kernels and nothing else
    tx = emrakul.wrap(optax.sgd(0.1), emrakul.controllers.make("dense"), total_steps=10)
    assert emrakul.layer_sparsity(tx.init(params)).shape == (3,)
    with pytest.raises(ValueError, match="pooling"):
        MinAtarQNetwork(3, pooling="max").init(jax.random.PRNGKey(0), obs)


@pytest.mark.parametrize("width,pooling,flat", [(1, "flatten", 2 * 2 * 32), (3, "gap", 96)])
def test_impala_network_shapes_and_residual_streams(width, pooling, flat):
    net = ImpalaQNetwork(num_actions=6, width=width, pooling=pooling)
    obs = jnp.zeros((5, 10, 10, 4))
    params = net.init(jax.random.PRNGKey(0), obs)["params"]
    assert params["Conv2D_0"]["kernel"].shape == (3, 3, 4, 16 * width)
    assert params["Conv2D_10"]["kernel"].shape == (3, 3, 32 * width, 32 * width)
    assert params["Dense_0"]["kernel"].shape == (flat, 256 * width)
    assert net.apply({"params": params}, obs).shape == (5, 6)
    assert jax.vmap(lambda o: net.apply({"params": params}, o))(obs[None]).shape == (1, 5, 6)
    # 15 convolutions and 2 dense layers, all pruned by the default filter
    tx = emrakul.wrap(optax.sgd(0.1), emrakul.controllers.make("dense"), total_steps=10)
    assert emrakul.layer_sparsity(tx.init(params)).shape == (17,)
    # each stack is one residual stream: its first conv and both blocks' second convs
    graph = dependency_graph(net.apply, {"params": params}, obs)
    streams = [g for g in graph.groups if sum(m.path.endswith("['kernel']") and not m.consumer
                                              for m in g.members) == 3]  # fmt: skip
    assert sorted(g.units for g in streams) == [16 * width, 32 * width, 32 * width]
    with pytest.raises(ValueError, match="pooling"):
        ImpalaQNetwork(3, pooling="max").init(jax.random.PRNGKey(0), obs)


def test_mlp_network_shapes():
    net = MLPQNetwork(num_actions=2, hidden=(32, 16))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]
    assert [params[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(4, 32), (32, 16), (16, 2)]
    assert net.apply({"params": params}, jnp.zeros((7, 4))).shape == (7, 2)


# ---------------------------------------------------------------------------------------------
# The DQN program

# CartPole settings tuned for a CI-sized run (50k environment steps, ~12 s on 2 cores with 2
# seeds vmapped). Measured late-training returns (mean over the episodes completed in the last
# third of the run, training policy with ε = 0.05) over 24 seeds (keys 0-11, split in 2): median
# ~175, range 87-263 (keys 0: 173 and 212); random play returns ~22.
CARTPOLE = dqn.DQNConfig(
    env_name="CartPole-v1",
    num_envs=4,
    total_env_steps=50_000,
    buffer_size=50_000,
    batch_size=64,
    learning_starts=1_000,
    train_every=4,
    target_update_every=500,
    lr=5e-4,
    adam_eps=1e-8,
    eps_end=0.05,
    eps_fraction=0.1,
    prune_every=500,
    sparsity=0.9,
    distribution="erk",
)


def _late_mean_return(metrics: dqn.DQNMetrics, fraction: float = 1 / 3) -> np.ndarray:
    """Per seed, the mean return of the episodes completed in the last ``fraction`` of rows."""
    k = max(1, round(metrics.return_sum.shape[-1] * fraction))
    sums = np.asarray(metrics.return_sum)[..., -k:].sum(-1)
    return sums / np.asarray(metrics.episodes)[..., -k:].sum(-1)


def test_cartpole_dqn_learns():
    program = dqn.make_dqn(CARTPOLE, "dense")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    state, metrics = jax.jit(jax.vmap(program.train))(keys)
    assert metrics.loss.shape == (2, program.num_intervals)
    late = _late_mean_return(metrics)
    first = np.asarray(metrics.mean_return)[:, 0]
    # Random play returns ~22; the first interval (ε ~ 1) is near it.
    assert np.all(first < 40), first
    assert np.all(late > 75), late  # measured minimum over 24 seeds: 87
    expected_steps = program.warmup_env_steps + program.num_intervals * 500 * 4
    np.testing.assert_array_equal(np.asarray(state.env_steps), expected_steps)
    np.testing.assert_array_equal(np.asarray(state.updates), program.num_intervals * 500)
    np.testing.assert_allclose(np.asarray(metrics.sparsity), 0.0, atol=1e-6)


def test_pruned_cartpole_reaches_sparsity():
    config = CARTPOLE._replace(total_env_steps=21_000, controller="gmp")
    program = dqn.make_dqn(config)
    state, metrics = jax.jit(program.train)(jax.random.PRNGKey(0))
    sparsity = np.asarray(metrics.sparsity)
    assert abs(sparsity[0]) < 1e-6 and np.all(np.diff(sparsity) >= -1e-6)
    np.testing.assert_allclose(sparsity[-1], 0.9, atol=0.01)
    np.testing.assert_allclose(float(emrakul.sparsity(state.opt_state)), 0.9, atol=0.01)
    # The target network copies the masked online weights: its kernels are as sparse.
    kernels = [p for p in jax.tree.leaves(state.target_params) if p.ndim >= 2]
    zeros = sum(int(jnp.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros >= 0.89
    result = jax.jit(program.evaluate, static_argnums=2)(state, jax.random.PRNGKey(1), 600)
    assert int(result["episodes"]) > 0 and np.isfinite(float(result["mean_return"]))


def test_run_compiles_once_and_counts_steps():
    # num_envs=8, train_every=4: 2 updates per vectorised step; blocks of gcd(10, 20) = 10.
    config = CARTPOLE._replace(
        num_envs=8,
        total_env_steps=1_000 + 10 * 10 * 4,
        buffer_size=2_000,
        batch_size=16,
        learning_starts=1_000,
        prune_every=10,
        target_update_every=20,
    )
    program = dqn.make_dqn(config)
    traces = []

    def chunk(state):
        traces.append(1)
        return program.run(state, 1)

    run = jax.jit(chunk)
    state0 = jax.jit(program.init)(jax.random.PRNGKey(0))
    assert int(state0.env_steps) == 1_000 and int(state0.buffer.size) == 1_000
    state1, m1 = run(state0)
    state2, _ = run(state1)
    state3, _ = run(state2)
    assert len(traces) == 1
    assert int(m1.updates[0]) == 10 and int(m1.env_steps[0]) == 1_040
    assert int(state3.updates) == 30 and int(state3.env_steps) == 1_120
    # target synced when the update count is a multiple of 20: at 0 and 20, not at 10.
    masked = lambda s: emrakul.masked(s.params, s.opt_state)
    for got, want in (
        (state2.target_params, masked(state0)),
        (state3.target_params, masked(state2)),
    ):
        jax.tree.map(np.testing.assert_array_equal, got, want)
    assert not np.allclose(state2.params["Dense_0"]["kernel"], state0.params["Dense_0"]["kernel"])


@pytest.mark.slow  # CI time; the Q-network is tested above, Breakout in test_ppo_host.py
def test_minatar_dqn_smoke():
    config = dqn.DQNConfig(
        env_name="Breakout-MinAtar",
        total_env_steps=200 + 2 * 20 * 4,
        buffer_size=500,
        learning_starts=200,
        prune_every=20,
        target_update_every=20,
        controller="gmp",
        pooling="gap",
    )
    program = dqn.make_dqn(config)
    state, metrics = jax.jit(program.train)(jax.random.PRNGKey(0))
    assert state.buffer.storage.obs.dtype == jnp.uint8
    assert state.buffer.storage.obs.shape == (500, 10, 10, 4)
    assert metrics.loss.shape == (2,) and np.all(np.isfinite(np.asarray(metrics.loss)))


@pytest.mark.parametrize(
    "field,value",
    [
        ("env_name", "NoSuchEnv-v0"),
        ("num_envs", 0),
        ("train_every", 3),  # does not divide num_envs=4 and is not a multiple of it
        ("batch_size", 0),
        ("learning_starts", 10),  # < batch_size
        ("buffer_size", 8),  # < batch_size
        ("gamma", 1.5),
        ("lr", 0.0),
        ("eps_end", -0.1),
        ("sparsity", 1.0),
        ("distribution", "dense"),
        ("pooling", "max"),
        ("network", "resnet"),
        ("controller", "nope"),
        ("prune_end", 0.1),  # < prune_start
        ("prune_every", 0),
        ("total_env_steps", 100),  # shorter than the warm-up plus one interval
        ("mlp_hidden", (64, 0)),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dqn.make_dqn(CARTPOLE._replace(**{field: value}))


def test_continuous_env_is_refused():
    with pytest.raises(ValueError, match="env_name"):
        dqn.make_dqn(CARTPOLE._replace(env_name="Pendulum-v1"))
