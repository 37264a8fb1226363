"""emrakul.controllers.register: a controller added from outside the package, by name."""

import uuid

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emrakul
from emrakul import controllers as ctl
from emrakul.controllers.base import Controller, Observation, leaf_scores, make_decision
from emrakul.surgery.lifecycle import LYSED

BUILT_IN = (
    "dense",
    "one_shot",
    "snip",
    "gmp",
    "set",
    "rigl",
    "gsnr",
    "dsd",
    "harmonic",
    "breathing",
    "l0",
    "variational",
    "continual_backprop",
    "redo",
    "shrink_perturb",
    "selective_forgetting",
    "planned",
    "magistrate",
)


def magnitude_at(name: str, at: float = 0.0) -> Controller:
    """A tiny controller built on the base helpers: from ``at * T`` on, every surgery keeps
    each layer's largest ``|theta|`` at the layer's target; its state counts the surgeries."""

    def init(params, observation: Observation | None = None, key=None) -> jax.Array:
        del params, observation, key
        return jnp.zeros((), jnp.int32)

    def decide(obs: Observation, state: jax.Array):
        magnitude = leaf_scores(obs, jnp.abs, obs.params)
        go = obs.step >= at * obs.total_steps
        decision = make_decision(len(obs.layer_size), obs.target, 0.0, magnitude, magnitude, go)
        return decision, state + 1

    return Controller(name=name, init=init, decide=decide)


@pytest.fixture
def registered():
    """A fresh controller name registered for one test, unregistered afterwards."""
    name = f"test_magnitude_{uuid.uuid4().hex[:8]}"

    @ctl.register(name)
    def factory(at: float = 0.0) -> Controller:
        return magnitude_at(name, at)

    yield name, factory
    if name in ctl.NAMES:
        ctl.unregister(name)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(nn.relu(nn.Dense(16)(x)))


def test_built_ins_are_registered_in_order_and_names_stay_tuple_like():
    assert tuple(ctl.NAMES) == BUILT_IN
    assert ctl.names() == BUILT_IN
    assert ctl.NAMES == BUILT_IN
    assert len(ctl.NAMES) == len(BUILT_IN) and ctl.NAMES[0] == "dense"
    assert ctl.NAMES[-2:] == ("planned", "magistrate")
    assert "gmp" in ctl.NAMES and "nope" not in ctl.NAMES
    assert repr(ctl.NAMES) == repr(BUILT_IN) and f"{ctl.NAMES}" == f"{BUILT_IN}"
    assert ctl.factory("gmp") is ctl.gmp and ctl.factory("set") is ctl.set_
    assert ctl.factory("variational") is ctl.variational_units
    with pytest.raises(TypeError):
        ctl.NAMES[0] = "x"  # read-only


def test_a_registered_controller_is_made_by_name_and_prunes_through_wrap(registered):
    name, factory = registered
    assert name in ctl.NAMES and ctl.names()[-1] == name and len(ctl.NAMES) == len(BUILT_IN) + 1
    assert ctl.factory(name) is factory
    controller = ctl.make(name, at=0.0)
    assert controller.name == name

    net = Net()
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 8))
    y = jax.random.randint(jax.random.PRNGKey(1), (32,), 0, 4)
    params = net.init(jax.random.PRNGKey(2), x)["params"]
    tx = emrakul.wrap(optax.adam(1e-2), controller, total_steps=12, sparsity=0.5, every=4)
    state = tx.init(params)

    def loss_fn(p, s):
        logits = net.apply({"params": emrakul.masked(p, s)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p, s)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    for _ in range(12):
        params, state, loss = step(params, state)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(emrakul.sparsity(state)), 0.5, atol=1e-2)
    assert int(state.controller) == 3  # surgeries at steps 0, 4, 8
    for layer in ("Dense_0", "Dense_1"):
        life = np.asarray(state.life.state[layer]["kernel"])
        assert (np.asarray(params[layer]["kernel"])[life == LYSED] == 0).all()


def test_reregistering_a_name_raises_unless_override(registered):
    name, _ = registered
    with pytest.raises(ValueError, match="already registered"):
        ctl.register(name)(lambda: magnitude_at(name))
    with pytest.raises(ValueError, match="already registered"):
        ctl.register("gmp")(ctl.gmp)
    position = ctl.names().index(name)

    def replacement() -> Controller:
        return magnitude_at(name, at=0.5)

    assert ctl.register(name, override=True)(replacement) is replacement
    assert ctl.factory(name) is replacement and ctl.names().index(name) == position
    assert ctl.make("gmp") is not None and ctl.factory("gmp") is ctl.gmp


def test_unregister_removes_the_name_and_make_then_raises(registered):
    name, factory = registered
    assert ctl.unregister(name) is factory
    assert name not in ctl.NAMES and ctl.NAMES == BUILT_IN
    with pytest.raises(ValueError, match="unknown controller"):
        ctl.make(name)
    with pytest.raises(KeyError):
        ctl.unregister(name)


@pytest.mark.parametrize("bad", ["", " padded ", "\t"])
def test_bad_names_raise_value_error(bad):
    with pytest.raises(ValueError, match="non-empty string"):
        ctl.register(bad)


@pytest.mark.parametrize("bad", [None, 3, ("gmp",), b"gmp"])
def test_non_string_names_raise_type_error(bad):
    with pytest.raises(TypeError, match="must be a str"):
        ctl.register(bad)


def test_a_non_callable_factory_raises_type_error():
    name = f"test_bad_{uuid.uuid4().hex[:8]}"
    with pytest.raises(TypeError, match="callable"):
        ctl.register(name)(42)
    assert name not in ctl.NAMES


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown controller 'nope'"):
        ctl.make("nope")
    with pytest.raises(KeyError):
        ctl.unregister("nope")
    with pytest.raises(TypeError):
        ctl.unregister(7)
