"""Meta-training on plans: ES (common random numbers, resumption) and PPO (phases, advantages)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.plan_space import PlanSpace, SurgeryPlan, zero_plan
from emrakul.lab.meta import es, es_search, es_train, open_loop, plan_rollout, ppo_plans, ppo_train
from experiments.configs.default import get_config


def tiny_config():
    c = get_config()
    c.host.width = (16, 16)
    c.data.num_samples = 600
    c.data.monitor = 50
    c.train.steps = 40
    c.train.batch_size = 16
    c.prune.every = 10
    c.prune.sparsity = 0.9
    c.prune.distribution = "erk"
    return c


@pytest.fixture(scope="module")
def plan_group():
    return open_loop.plan_group(tiny_config(), PlanSpace.breathing(), "tiny")


def test_population_scores_share_host_seeds(plan_group):
    zero = open_loop.zero_genome(3)
    genomes = jax.tree.map(lambda x: jnp.stack([x, x, x + 0.5]), zero)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    (scores,) = es.scores_fn([plan_group])(genomes, keys)
    assert scores.val_accuracy.shape == (3, 2)
    # common random numbers: equal genomes on the same seeds score identically
    np.testing.assert_array_equal(scores.val_loss[0], scores.val_loss[1])
    np.testing.assert_array_equal(scores.val_accuracy[0], scores.val_accuracy[1])
    assert not np.array_equal(scores.val_loss[0], scores.val_loss[2])
    np.testing.assert_allclose(scores.sparsity, 0.9, atol=1e-3)
    fit = es.fitness([scores])
    np.testing.assert_allclose(fit, scores.val_accuracy.mean(1))


@pytest.mark.slow  # ~60 s of CI: three searches (resuming itself is tested in tests/test_loop.py)
def test_search_resumes_where_it_stopped(plan_group, tmp_path):
    cfg = es_search.SearchConfig(population=4, seeds=1, generations=2, sigma=0.3, lr=0.1)
    template = open_loop.zero_genome(3)
    whole = es_search.run_search([plan_group], template, cfg, str(tmp_path / "a"), None)
    es_search.run_search([plan_group], template, cfg._replace(generations=1), str(tmp_path / "b"),
                         None)  # fmt: skip
    resumed = es_search.run_search([plan_group], template, cfg, str(tmp_path / "b"), None)
    assert [r["generation"] for r in resumed.log] == [0, 1]
    for a, b in zip(jax.tree.leaves(whole.mean), jax.tree.leaves(resumed.mean), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(whole.mean))
    with pytest.raises(ValueError, match="population"):
        es_search.check_search(cfg._replace(population=3))


def test_gaussian_log_prob_and_entropy_match_numpy():
    obs = _fake_obs()
    mean = jax.tree.map(lambda x: x + 0.1, zero_plan(3, 5))
    log_std = plan_rollout.broadcast_std({f: jnp.float32(-1.0) for f in SurgeryPlan._fields}, mean)
    plan = jax.tree.map(lambda x: x + 0.3, mean)
    mask = plan_rollout.plan_mask(obs)
    n = sum(float(jnp.sum(m)) for m in jax.tree.leaves(mask))
    want = n * (-0.5 * (0.3 / math.exp(-1.0)) ** 2 + 1.0 - 0.5 * math.log(2 * math.pi))
    got = plan_rollout.log_prob(plan, mean, log_std, obs)
    assert float(got) == pytest.approx(want, rel=1e-5)
    ent = plan_rollout.entropy(log_std, obs)
    assert float(ent) == pytest.approx(n * (-1.0 + 0.5 * math.log(2 * math.pi * math.e)), rel=1e-5)


def _fake_obs():
    from emrakul.agent.spaces import AgentObs

    return AgentObs(jnp.zeros((5, 3)), jnp.asarray([True, True, True, False, False]),
                    jnp.zeros(5, jnp.int32), jnp.asarray([True, True, False]), jnp.zeros(4),
                    jnp.zeros((3, 3)))  # fmt: skip


@pytest.mark.slow  # two host groups compiled for PPO (~140 s); the advantages are tested below
def test_ppo_iteration_runs_and_resumes(tmp_path):
    named = es_train.group_configs(tiny_config(), "16,16;8,8,8")
    groups = ppo_train.plan_groups(named, PlanSpace.breathing())
    params = es_train.template_params(tiny_config(), PlanNetwork())
    cfg = ppo_plans.PlanPPOConfig(seeds=2, group_size=2, phases=2, epochs=1, num_minibatches=2)
    final, rows = ppo_train.run_ppo(
        groups, PlanNetwork(), params, cfg, 1, str(tmp_path), report=None
    )
    (row,) = rows
    assert np.isfinite(row["val_accuracy"]) and np.isfinite(row["approx_kl"])
    assert row["std"] == pytest.approx(0.3, rel=0.05)
    moved = [float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(final), jax.tree.leaves(params), strict=True)]  # fmt: skip
    assert max(moved) > 0
    _, again = ppo_train.run_ppo(groups, PlanNetwork(), params, cfg, 1, str(tmp_path), report=None)
    assert len(again) == 1  # resumed: nothing left to do


def test_ppo_advantages_are_relative_to_the_group():
    cfg = ppo_plans.PlanPPOConfig(seeds=2, group_size=2, phases=2, epochs=1, num_minibatches=2)
    batch = ppo_plans._batch([(_steps(), jnp.asarray([[0.1, 0.3], [0.5, 0.5]]))], cfg)
    np.testing.assert_allclose(batch["adv"].reshape(2, 2, 2)[:, :, 0], [[-0.1, 0.1], [0, 0]])


def _steps():
    obs = _fake_obs()
    step = plan_rollout.PhaseStep(obs, zero_plan(3, 5), jnp.float32(0), jnp.float32(0))
    return jax.tree.map(lambda x: jnp.zeros((2, 2, 2, *jnp.shape(x))), step)


def test_phases_must_divide_the_run(plan_group):
    net = PlanNetwork()
    with pytest.raises(ValueError, match="phases must divide"):
        plan_rollout.rollout_host(plan_group.trainer, None, net, {}, {}, 3, 10, 4,
                                  jax.random.PRNGKey(0), jax.random.PRNGKey(1))  # fmt: skip
