"""The PPO host: GAE against NumPy, config errors, one compilation, CartPole learns, pruning."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.lab.hosts import ppo_host
from emrakul.lab.hosts.ppo_host import PPOHostConfig, make_ppo


def _gae_reference(reward, done, value, last_value, gamma, lam):
    t_len, n = reward.shape
    adv = np.zeros((t_len, n))
    for e in range(n):
        running = 0.0
        for t in reversed(range(t_len)):
            next_v = last_value[e] if t == t_len - 1 else value[t + 1, e]
            nonterminal = 1.0 - done[t, e]
            delta = reward[t, e] + gamma * next_v * nonterminal - value[t, e]
            running = delta + gamma * lam * nonterminal * running
            adv[t, e] = running
    return adv


def test_advantages_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=(17, 3)).astype(np.float32)
    done = (rng.uniform(size=(17, 3)) < 0.2).astype(np.float32)
    value = rng.normal(size=(17, 3)).astype(np.float32)
    last = rng.normal(size=(3,)).astype(np.float32)
    got = jax.jit(ppo_host.advantages, static_argnums=(4, 5))(reward, done, value, last, 0.9, 0.8)
    np.testing.assert_allclose(got, _gae_reference(reward, done, value, last, 0.9, 0.8), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_envs", 0, "num_envs"),
        ("num_minibatches", 3, "num_minibatches"),
        ("every", 10, "every"),
        ("sparsity", 1.0, "sparsity"),
        ("controller", "nope", "controller"),
        ("env_name", "Pong-v0", "env_name"),
        ("total_env_steps", 100, "total_env_steps"),
    ],
)
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        make_ppo(PPOHostConfig()._replace(**{field: value}))


def test_minatar_actor_critic_shapes():
    cfg = PPOHostConfig(env_name="Breakout-MinAtar", width=2, pooling="gap")
    net = ppo_host.make_network(cfg, 3)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 10, 4)))["params"]
    logits, value = net.apply({"params": params}, jnp.zeros((5, 10, 10, 4)))
    assert logits.shape == (5, 3) and value.shape == (5,)
    assert params["Conv2D_0"]["kernel"].shape == (3, 3, 4, 32)


def test_cartpole_ppo_learns_and_compiles_once():
    # Measured on 2 cores: the mean return of the episodes of the last intervals is ~150-350
    # after 60k steps (random play: ~22).
    ppo = make_ppo(PPOHostConfig(total_env_steps=60_000))
    state = jax.jit(ppo.init)(jax.random.PRNGKey(0))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def chunk(s):
        return ppo.run(s, 5)

    rows = []
    for _ in range(ppo.num_intervals // 5):
        state, m = chunk(state)
        rows.append(np.asarray(m.mean_return))
    returns = np.concatenate(rows)
    assert returns[:3].mean() < 60
    assert np.nanmean(returns[-5:]) > 100, returns


def test_gmp_prunes_the_actor_critic_to_the_target():
    ppo = make_ppo(PPOHostConfig(total_env_steps=12_288, every=16, controller="gmp",
                                 sparsity=0.9))  # fmt: skip
    _, m = jax.jit(jax.vmap(ppo.train))(jax.random.split(jax.random.PRNGKey(1), 2))
    np.testing.assert_allclose(np.asarray(m.sparsity)[:, -1], 0.9, atol=1e-3)
    assert np.all(np.diff(np.asarray(m.sparsity), axis=1) >= -1e-6)  # monotone GMP schedule
    assert np.isfinite(np.asarray(m.value_loss)).all()
