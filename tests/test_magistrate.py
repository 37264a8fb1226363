"""The Magistrate on plans: zero heads are neutral, padding is ignored, policy files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod
from emrakul.agent import features
from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.magistrate import (
    FORMAT,
    load_policy,
    policy_controller,
    save_policy,
    signature,
)
from emrakul.controllers.plan_decision import region_layout
from emrakul.controllers.plan_space import PlanSpace
from emrakul.lab.loop import make_train
from emrakul.lab.meta import es_train
from experiments.configs.default import get_config


def tiny_config():
    c = get_config()
    c.host.width = (16, 16)
    c.data.num_samples = 600
    c.train.steps = 60
    c.train.batch_size = 32
    c.prune.every = 10
    c.prune.sparsity = 0.9
    c.prune.distribution = "erk"
    return c


@pytest.fixture(scope="module")
def params():
    return es_train.template_params(tiny_config(), PlanNetwork())


def observation(config):
    trainer = make_train(config, "planned")
    state = trainer.init(jax.random.PRNGKey(0))
    return wrap_mod.state_observation(state.params, state.opt_state, total_steps=60)


def test_untrained_magistrate_is_the_neutral_heuristic(params):
    config = tiny_config()
    learned = make_train(config, policy_controller(PlanSpace.breathing(), params))
    plain = make_train(config, "breathing")
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    _, m_l, t_l = jax.jit(jax.vmap(learned.train))(keys)
    _, m_b, t_b = jax.jit(jax.vmap(plain.train))(keys)
    np.testing.assert_array_equal(m_l.val_accuracy, m_b.val_accuracy)
    np.testing.assert_array_equal(m_l.layer_sparsity, m_b.layer_sparsity)
    np.testing.assert_array_equal(t_l["accuracy"], t_b["accuracy"])


def test_padding_changes_nothing(params):
    net = PlanNetwork()
    trained = jax.tree.map(lambda x: x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), params)
    obs = observation(tiny_config())
    layout = region_layout(obs)
    own = net.apply(trained, features.observe(obs, layout, layout.num_regions, 3)).plan
    padded = net.apply(trained, features.observe(obs, layout, layout.num_regions + 7, 5)).plan
    np.testing.assert_allclose(padded.alloc[:3], own.alloc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded.bias[: layout.num_regions], own.bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded.shape, own.shape, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(padded.bias[layout.num_regions :]).max()) == 0.0
    assert float(jnp.abs(own.alloc).max()) > 0  # the perturbed heads act


def test_policy_file_round_trip_and_layout_check(params, tmp_path):
    net, space = PlanNetwork(), PlanSpace.gmp()
    path = str(tmp_path / "p.msgpack")
    save_policy(path, params, net, space, generation=3)
    got, net2, space2, info = load_policy(path)
    assert net2 == net and space2 == space and info == {"generation": 3}
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ctl.make("magistrate", policy=path).needs_activations
    other = PlanNetwork(embed_dim=8)
    save_policy(path, other.init(jax.random.PRNGKey(0), _obs()), other, space)
    assert load_policy(path)[1] == other  # its own sizes are read back
    payload_sig = signature(net, space)
    payload_sig["region_features"] = ["something", "else"]
    from flax import serialization

    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(
            {"format": FORMAT, "signature": payload_sig, "info": {},
             "params": serialization.to_state_dict(params)}))  # fmt: skip
    with pytest.raises(ValueError, match="region_features"):
        ctl.make("magistrate", policy=path)
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize({"format": "other"}))
    with pytest.raises(ValueError, match="not a Magistrate plan policy"):
        load_policy(path)
    with pytest.raises(ValueError, match="no Magistrate policy"):
        load_policy(str(tmp_path / "none"))


def _obs():
    obs = observation(tiny_config())
    layout = region_layout(obs)
    return features.observe(obs, layout, layout.num_regions, layout.num_layers)


def test_the_shipped_policies_load_by_name():
    import importlib

    mg = importlib.import_module("emrakul.controllers.magistrate")
    controller = ctl.make("magistrate")
    assert controller.needs_vitals and controller.name == "magistrate"
    assert mg.policy_path("") == mg.SHIPPED and mg.policy_path("a/b.msgpack") == "a/b.msgpack"
    _, _, space, info = mg.load_policy(mg.policy_path("stream"))
    assert info["stream"] and info["remedy"] == "continual_backprop"
    assert not space.lyse_at_end and space.churn_after_end
    assert ctl.make("magistrate", policy="stream").needs_vitals


def test_a_deployment_can_keep_swapping_after_the_schedule_for_a_stream():
    """``churn_after_end`` keeps the swap fraction after the window; off (the default), none."""
    from emrakul.controllers.plan_decision import init_state, plan_decision
    from emrakul.controllers.plan_space import zero_plan

    obs = observation(tiny_config())
    late = obs._replace(step=jnp.int32(30), interval=jnp.int32(10))  # window 0-0.1 of 60 ended
    plan = zero_plan(len(obs.layer_size), region_layout(obs).num_regions)
    for after, want in ((True, 0.05), (False, 0.0)):
        space = PlanSpace.breathing(start=0.0, end=0.1, lyse_at_end=False, churn_after_end=after)
        decision, _ = plan_decision(late, plan, init_state(obs), space)
        np.testing.assert_allclose(np.asarray(decision.churn), want)
        assert decision.lyse is None
    stream = ctl.make("magistrate", start=0.0, end=0.1, lyse_at_end=False, churn_after_end=True)
    assert stream.needs_activations
    with pytest.raises(ValueError, match="unknown overrides"):
        ctl.make("magistrate", alloc_span=3.0)
