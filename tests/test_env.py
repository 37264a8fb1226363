"""SurgeryEnv: shapes, auto-reset, determinism, and the neutral action reproducing GMP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from controller_sim import spy_controller

from emrakul.agent import features
from emrakul.agent.networks import LYSE, AgentObs
from emrakul.controllers.magistrate_v0 import neutral_action
from emrakul.lab.loop import make_train
from emrakul.lab.meta.env import SurgeryEnv
from emrakul.surgery.lifecycle import LYSED
from experiments.configs.default import get_config


def tiny_config():
    c = get_config()
    c.host.width = (32, 32)
    c.data.num_samples = 600
    c.train.steps = 100
    c.train.batch_size = 32
    c.prune.every = 10
    c.prune.sparsity = 0.8
    return c


@pytest.fixture(scope="module")
def env():
    return SurgeryEnv(tiny_config(), r_max=96, l_max=4)


def run_episode(env, key, action_fn):
    obs, state = env.reset(key)

    def body(carry, i):
        obs, state = carry
        k = jax.random.fold_in(key, i)
        obs, state, reward, done, info = env.step(k, state, action_fn(i), None)
        return (obs, state), (reward, done, info["val_accuracy"], info["sparsity"], obs)

    (_, state), out = jax.lax.scan(body, (obs, state), jnp.arange(env.num_steps))
    return state, out


def test_observation_shapes_and_padding(env):
    obs, _ = jax.jit(env.reset)(jax.random.PRNGKey(0))
    assert isinstance(obs, AgentObs)
    assert obs.regions.shape == (96, features.NUM_FEATURES)
    assert int(obs.region_valid.sum()) == 32 + 32 + 10  # units of the three kernels
    assert obs.layer_valid.tolist() == [True, True, True, False]
    assert obs.globals.shape == (features.NUM_GLOBALS,)
    assert np.isfinite(np.asarray(obs.regions)).all()
    assert (np.asarray(obs.regions)[74:] == 0).all()


def test_neutral_action_is_gmp_and_episode_auto_resets(env):
    key = jax.random.PRNGKey(3)
    neutral = neutral_action(env.l_max, env.r_max)
    _, (reward, done, val_acc, sparsity, _) = jax.jit(
        lambda k: run_episode(env, k, lambda i: neutral)
    )(key)
    assert done.tolist() == [False] * (env.num_steps - 1) + [True]
    assert np.isfinite(np.asarray(reward)).all()
    gmp = make_train(tiny_config(), "gmp")
    _, metrics = jax.jit(lambda k: gmp.run(gmp.init(k), gmp.num_intervals))(key)
    np.testing.assert_allclose(np.asarray(sparsity), np.asarray(metrics.sparsity), atol=1e-6)
    np.testing.assert_allclose(np.asarray(val_acc), np.asarray(metrics.val_accuracy), atol=1e-6)


def test_region_decisions_act(env):
    key = jax.random.PRNGKey(1)
    neutral = neutral_action(env.l_max, env.r_max)
    lyse_first = neutral._replace(region=neutral.region.at[:4].set(LYSE))
    _, state = env.reset(key)
    step = jax.jit(env.step)
    for i in range(5):  # reach the pruning phase (starts at 20% of training)
        _, state, *_ = step(jax.random.fold_in(key, i), state, lyse_first, None)
    life = np.asarray(state.run.opt_state.life.state["Dense_0"]["kernel"])
    assert (life[:, :4] == LYSED).all()  # the first four units of layer 0 were lysed
    assert (life[:, 4:] != LYSED).all()


def test_vmap_over_a_population(env):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    obs, state = jax.vmap(env.reset)(keys)
    act = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (3, *x.shape)),
        neutral_action(env.l_max, env.r_max),
    )
    obs, state, reward, _, _ = jax.jit(jax.vmap(env.step))(keys, state, act, None)
    assert reward.shape == (3,) and obs.regions.shape == (3, 96, features.NUM_FEATURES)


def test_deployed_neutral_policy_is_gmp_through_the_wrapper():
    from emrakul.agent import networks as nw
    from emrakul.controllers.magistrate_v0 import deployed

    env = SurgeryEnv(tiny_config())
    obs, _ = env.reset(jax.random.PRNGKey(0))
    kwargs = {"head_init_scale": 0.0}  # an exactly neutral policy
    params = nw.Agent(**kwargs).init(jax.random.PRNGKey(1), obs)
    key = jax.random.PRNGKey(5)
    learned = make_train(tiny_config(), deployed(params, agent_kwargs=kwargs))
    gmp = make_train(tiny_config(), "gmp")
    _, m1 = jax.jit(lambda k: learned.run(learned.init(k), learned.num_intervals))(key)
    _, m2 = jax.jit(lambda k: gmp.run(gmp.init(k), gmp.num_intervals))(key)
    np.testing.assert_allclose(np.asarray(m1.sparsity), np.asarray(m2.sparsity), atol=1e-6)
    np.testing.assert_allclose(np.asarray(m1.val_accuracy), np.asarray(m2.val_accuracy), atol=1e-6)


def test_magistrate_needs_a_policy():
    from emrakul import controllers

    with pytest.raises(ValueError, match="needs a trained policy"):
        controllers.make("magistrate_v0")
    with pytest.raises(ValueError, match="no trained Magistrate"):
        controllers.make("magistrate_v0", policy="/nonexistent/agent")


def test_deployed_policy_sees_the_environments_observation(env):
    """A controller deployed in the training loop observes exactly what the environment shows
    the agent (activations, validation accuracy and loss health included)."""
    spy = spy_controller(env, needs_activations=True)
    trainer = make_train(env.config, spy)
    run = jax.jit(trainer.init)(jax.random.PRNGKey(5))
    step = jax.jit(trainer.interval)
    for _ in range(3):
        expected = jax.jit(env.observe)(run, trainer.evaluate(run, "val")["accuracy"])
        run, _ = step(run)
        got = run.opt_state.controller
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    health = np.asarray(got.globals[-3:])
    assert np.isfinite(health).all() and 0.0 < health[2] <= 1.0  # log loss, slope, val acc
    dormant = np.asarray(
        got.regions[: env.layout.num_regions, features.FEATURE_NAMES.index("dormant")]
    )
    assert dormant.std() > 0  # activation scores vary across units
