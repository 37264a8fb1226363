"""PPO meta-training of the Magistrate: one compiled update runs and changes the agent."""

import jax
import numpy as np

from emrakul.lab.meta.env import SurgeryEnv
from emrakul.lab.meta.train import PPOConfig, make_agent_train
from experiments.configs.default import get_config


def test_ppo_update_runs_and_learns_something():
    c = get_config()
    c.host.width = (16,)
    c.data.num_samples = 600
    c.train.steps = 60
    c.train.batch_size = 32
    c.prune.every = 10
    env = SurgeryEnv(c)
    trainer = make_agent_train(env, PPOConfig(num_hosts=2, num_minibatches=2, epochs=2))
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    before = state.params
    state, metrics = jax.jit(trainer.update)(state)
    for k, v in metrics.items():
        assert np.isfinite(float(v)), k
    assert float(metrics["final_sparsity"]) > 0.85  # every episode reaches the 0.9 target
    changed = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                           before, state.params)  # fmt: skip
    assert max(jax.tree.leaves(changed)) > 0


def test_population_of_different_widths_and_depths_shares_one_policy():
    import pytest

    from emrakul.lab.meta.env import population

    def host(width, steps=60, every=10):
        c = get_config()
        c.host.width = width
        c.data.num_samples = 600
        c.train.steps = steps
        c.train.batch_size = 32
        c.prune.every = every
        return c

    envs = population([host((16,)), host((24, 8))])
    assert [e.r_max for e in envs] == [24 + 8 + 10] * 2 and [e.l_max for e in envs] == [3, 3]
    trainer = make_agent_train(envs, PPOConfig(num_hosts=2, num_minibatches=2, epochs=1))
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    assert state.obs.regions.shape[:2] == (4, 42)
    state, metrics = jax.jit(trainer.update)(state)
    for k, v in metrics.items():
        assert np.isfinite(float(v)), k
    assert {"test_accuracy/0", "test_accuracy/1"} <= set(metrics)
    with pytest.raises(ValueError, match="episode length"):
        population([host((16,)), host((16,), steps=80)])
