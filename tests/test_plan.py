"""Surgery plans: the zero plan is breathing / GMP exactly; plans move weights at a fixed total."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod
from emrakul.controllers.plan_space import PlanSpace, SurgeryPlan, zero_plan
from emrakul.controllers.planned import load_plan, plan_controller, save_plan
from emrakul.lab.loop import make_train
from emrakul.surgery.lifecycle import ALIVE, LYSED
from experiments.configs.default import get_config


def tiny_config(distribution):
    c = get_config()
    c.host.width = (16, 16)
    c.data.num_samples = 600
    c.train.steps = 60
    c.train.batch_size = 16
    c.prune.every = 10
    c.prune.sparsity = 0.9
    c.prune.distribution = distribution
    return c


def train(config, controller, seeds=2):
    trainer = make_train(config, controller)
    return jax.jit(jax.vmap(trainer.train))(jax.random.split(jax.random.PRNGKey(7), seeds))


def alive(state):
    return [np.asarray(s == ALIVE) for s in jax.tree.leaves(state.opt_state.life.state)
            if np.ndim(s) > 1]  # fmt: skip


@pytest.mark.parametrize(
    ("distribution", "heuristic"),
    [
        ("erk", "breathing"),
        # the GMP base is the same mechanism with other neutral values (~70 s): slow, for CI time
        pytest.param("uniform", "gmp", marks=pytest.mark.slow),
    ],
)
def test_zero_plan_trains_exactly_as_the_heuristic(distribution, heuristic):
    config = tiny_config(distribution)
    s_h, m_h, t_h = train(config, heuristic)
    space = PlanSpace.breathing() if heuristic == "breathing" else PlanSpace.gmp()
    s_p, m_p, t_p = train(config, plan_controller(space))
    for a, b in zip(alive(s_h), alive(s_p), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("val_accuracy", "val_loss", "layer_sparsity", "train_loss", "cut", "grown"):
        np.testing.assert_array_equal(getattr(m_h, name), getattr(m_p, name), err_msg=name)
    np.testing.assert_array_equal(t_h["accuracy"], t_p["accuracy"])
    masked = jax.vmap(wrap_mod.masked)
    for a, b in zip(jax.tree.leaves(masked(s_h.params, s_h.opt_state)),
                    jax.tree.leaves(masked(s_p.params, s_p.opt_state)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    # after the window, what is not alive is lysed (sustained sedation), never sampled
    states = [np.asarray(s) for s in jax.tree.leaves(s_p.opt_state.life.state) if np.ndim(s) > 1]
    assert all(((s == ALIVE) | (s == LYSED)).all() for s in states)


@pytest.mark.slow  # ~40 s of CI: two trained runs (the zero-plan equality test above stays in CI)
def test_a_plan_moves_weights_between_layers_at_the_same_total():
    config = tiny_config("erk")
    plan = zero_plan(3, 42)._replace(alloc=jnp.asarray([1.0, -1.0, 0.5]))
    s_0, m_0, _ = train(config, plan_controller(PlanSpace.breathing()), seeds=1)
    s_1, m_1, _ = train(config, plan_controller(PlanSpace.breathing(), plan), seeds=1)
    kept_0 = [int(a.sum()) for a in alive(s_0)]
    kept_1 = [int(a.sum()) for a in alive(s_1)]
    assert sum(kept_0) == sum(kept_1)
    assert kept_1[0] > kept_0[0] and kept_1[1] < kept_0[1]
    assert float(m_1.sparsity[0, -1]) == pytest.approx(float(m_0.sparsity[0, -1]), abs=0)


def test_knobs_are_neutral_at_zero_and_bounded():
    space = PlanSpace.breathing()
    k = space.knobs(zero_plan(2, 5))
    assert k.decay.tolist() == [np.float32(0.9)] * 2
    assert k.hysteresis.tolist() == [np.float32(0.1)] * 2
    assert float(k.shape) == 3.0 and float(k.temperature) == 0.0
    big = jax.tree.map(lambda x: x + 50.0, zero_plan(2, 5))
    k = space.knobs(big)
    assert float(k.decay.max()) <= np.float32(0.99) and float(k.churn.max()) <= 0.5
    assert float(k.shape) <= 6.0 and float(k.end) <= 0.15 + 1e-6
    k = space.knobs(jax.tree.map(lambda x: x - 50.0, zero_plan(2, 5)))
    assert float(k.decay.min()) >= 0.0 and float(k.shape) >= 1.0 and float(k.start) >= -0.2


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="base"):
        ctl.make("planned", base="rigl")
    with pytest.raises(ValueError, match="base"):
        PlanSpace(base="rigl")
    with pytest.raises(ValueError, match="no surgery plan"):
        ctl.make("planned", plan=str(tmp_path / "none.npz"))
    np.savez(tmp_path / "bad.npz", alloc=np.zeros(3))
    with pytest.raises(ValueError, match="lacks"):
        load_plan(str(tmp_path / "bad.npz"))
    small = plan_controller(PlanSpace.breathing(), zero_plan(2, 42))
    with pytest.raises(ValueError, match="covers 2 layers"):
        train(tiny_config("uniform"), small, seeds=1)


def test_save_and_load_round_trip(tmp_path):
    plan = jax.tree.map(lambda x: x + 0.25, zero_plan(3, 42))
    path = str(tmp_path / "plan.npz")
    save_plan(path, plan, PlanSpace.gmp(start=0.1, end=0.7))
    got, space = load_plan(path)
    assert space == {"base": "gmp", "start": pytest.approx(0.1), "end": pytest.approx(0.7)}
    for a, b in zip(got, plan, strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(got, SurgeryPlan)
    assert ctl.make("planned", plan=path).needs_vitals


@pytest.mark.slow  # ~40 s of CI: two trained runs
def test_the_last_surgery_reaches_the_target_when_the_window_ends_later():
    config = tiny_config("erk")  # surgeries at steps 0, 10, ..., 50 of 60
    late = zero_plan(3, 42)._replace(end=jnp.float32(5.0))  # window end 0.95 * 60 = 57 > 50
    _, m_0, _ = train(config, plan_controller(PlanSpace.breathing()), seeds=1)
    _, m_1, _ = train(config, plan_controller(PlanSpace.breathing(), late), seeds=1)
    np.testing.assert_array_equal(m_1.layer_sparsity[0, -1], m_0.layer_sparsity[0, -1])
    assert float(m_1.layer_sparsity[0, -2].sum()) < float(m_0.layer_sparsity[0, -2].sum())
