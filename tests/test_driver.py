"""The one driver (``emrakul.lab.driver``), the Program shape and the shared host builders."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod
from emrakul.lab import build, driver, rl_cell, runner
from emrakul.lab import sharding as shd
from emrakul.lab.program import Program, check_program


class ToyMetrics(NamedTuple):
    loss: jax.Array
    x: jax.Array
    unmeasured: Any = None  # a field the program does not measure


def toy_program(num_intervals: int = 6, nan_at: int | None = None) -> Program:
    """A contraction ``x <- 0.9 x + 0.1`` per interval, its squared norm as the loss."""

    def init(key):
        return {"x": jax.random.normal(key, (3,)), "i": jnp.int32(0)}

    def interval(state, _):
        x, i = state["x"] * 0.9 + 0.1, state["i"] + 1
        loss = jnp.sum(x**2)
        if nan_at is not None:
            loss = jnp.where(i == nan_at, jnp.nan, loss)
        return {"x": x, "i": i}, ToyMetrics(loss, x)

    return Program(
        init=init,
        run=lambda state, k: jax.lax.scan(interval, state, None, k),
        num_intervals=num_intervals,
        metrics_type=ToyMetrics,
        loss_field="loss",
        loss_name="toy loss",
        remedy="Do less.",
        final=lambda state: {"i": state["i"], "x0": state["x"][0]},
        describe=lambda m: f"loss {float(np.mean(m.loss[:, -1])):.3f}",
    )


def whole_run(program: Program, seeds):
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    state, metrics = jax.jit(
        jax.vmap(lambda k: program.run(program.init(k), program.num_intervals))
    )(keys)
    return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, state)


def assert_tree_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


# ---------------------------------------------------------------------------------------------
# chunk rule and shapes


def test_chunk_rule():
    # the MinAtar rule: the largest divisor in [ceil(chunk / 2), chunk], else chunk itself
    assert driver.chunk_size(124, 10) == 10 and driver.chunk_size(49, 10) == 7
    assert driver.chunk_size(8, 20) == 8 and driver.chunk_size(7, 5) == 5
    # floor 1: the largest divisor at most chunk (the classifier runner's rule)
    assert driver.chunk_size(7, 5, floor=1) == 1 and driver.chunk_size(30, 5, floor=1) == 5
    assert driver.chunk_size(12, 5, floor=1) == 4
    assert rl_cell.chunk_size is driver.chunk_size
    for bad in [(0, 3), (5, 0)]:
        with pytest.raises(ValueError, match="num_intervals >= 1 and chunk >= 1"):
            driver.chunk_size(*bad)


def test_one_error_class_and_reexports():
    assert runner.NonFiniteLossError is driver.NonFiniteLossError
    assert rl_cell.NonFiniteLossError is driver.NonFiniteLossError
    assert rl_cell._clock(3725.0) == "1h02m05s" and rl_cell._clock(float("nan")) == "?"


def test_check_program_names_the_field():
    program = toy_program()
    check_program(program)
    with pytest.raises(ValueError, match="loss_field='nope'"):
        check_program(program._replace(loss_field="nope"))
    with pytest.raises(ValueError, match="num_intervals"):
        check_program(program._replace(num_intervals=0))
    with pytest.raises(TypeError, match="Program"):
        check_program({"init": None})


# ---------------------------------------------------------------------------------------------
# the driver on a toy program


def test_drive_equals_one_whole_program(capsys):
    program = toy_program()
    run = driver.drive(program, [0, 5], chunk=4, progress=driver.line, label="toy")
    metrics, state = whole_run(program, [0, 5])
    assert_tree_equal(run.metrics, metrics)
    assert run.metrics.unmeasured is None and run.metrics.loss.shape == (2, 6)
    np.testing.assert_array_equal(run.final["i"], [6, 6])
    np.testing.assert_array_equal(run.final["x0"], state["x"][:, 0])
    assert run.compilations == 1 and run.resumed_from == 0  # chunks of 3: one program
    out = capsys.readouterr().out
    assert "toy: 3/6 intervals | loss " in out and "toy: 6/6 intervals" in out


@pytest.mark.parametrize("unit,restored", [("intervals", 3), ("chunks", 1)])
def test_interrupted_drive_resumes_exactly(tmp_path, capsys, unit, restored):
    program = toy_program()
    ck = driver.Checkpoints(str(tmp_path / "ck"), step_unit=unit, wall_clock=unit == "intervals")
    full = driver.drive(program, [1, 2], chunk=3)
    assert driver.drive(program, [1, 2], chunk=3, checkpoints=ck, max_chunks=1) is None
    again = driver.drive(program, [1, 2], chunk=3, checkpoints=ck, progress=driver.line, label="t")
    assert again.resumed_from == restored
    assert_tree_equal(again.metrics, full.metrics)
    assert_tree_equal(again.final, full.final)
    assert "t: resuming from interval 3/6" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "ck"))[-1] == str(6 if unit == "intervals" else 2)
    assert again.total_seconds >= again.seconds


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    ck = driver.Checkpoints(str(tmp_path / "ck"))
    with pytest.raises(
        driver.NonFiniteLossError,
        match=r"bad: non-finite toy loss in intervals 3-5 \(seeds \[4\]\); stopped\. "
        r"Last good checkpoint: interval 3\. Do less\.",
    ):
        driver.drive(toy_program(nan_at=5), [4], chunk=3, checkpoints=ck, label="bad")
    assert os.listdir(tmp_path / "ck") == ["3"]


def test_map_seed_loop_on_a_mesh_and_the_marker(tmp_path, capsys):
    program = toy_program()
    plain = driver.drive(program, [0, 1], chunk=2, progress=driver.bar)
    assert "intervals, ETA" in capsys.readouterr().err
    ck = driver.Checkpoints(str(tmp_path / "ck"), seed_loop_marker=True)
    mesh = shd.seed_mesh()
    mapped = driver.drive(program, [0, 1], chunk=2, seed_loop="map", mesh=mesh, checkpoints=ck)
    np.testing.assert_allclose(mapped.metrics.loss, plain.metrics.loss, rtol=1e-6)
    with open(tmp_path / "ck.seed_loop") as f:
        assert f.read() == "map"
    with pytest.raises(ValueError, match="written with seed_loop='map'"):
        driver.drive(program, [0, 1], chunk=2, checkpoints=ck)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"seeds": []}, "at least one seed"),
        ({"chunk": 0}, "chunk must be a positive int"),
        ({"seed_loop": "pmap"}, "seed_loop must be one of"),
        ({"checkpoints": driver.Checkpoints("x", step_unit="epochs")}, "step_unit"),
    ],
)
def test_bad_arguments_are_refused_before_compiling(kwargs, match):
    args = {"seeds": [0], "chunk": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        driver.drive(toy_program(), args.pop("seeds"), **args)


# ---------------------------------------------------------------------------------------------
# the shared builders


def test_make_controller_from_a_name_kwargs_or_an_object():
    gmp = build.make_controller("gmp", build.schedule_kwargs(0.5, 0.6))
    assert isinstance(gmp, ctl.Controller)
    assert build.make_controller(gmp) is gmp
    assert build.schedule_kwargs(0.1, 0.9) == {"gmp": {"start": 0.1, "end": 0.9}}
    with pytest.raises(ValueError, match="unknown controller"):
        build.make_controller("nope")
    with pytest.raises(ValueError, match="a name or a Controller"):
        build.make_controller(3)


def test_wrapped_adam_is_wrap_of_adam():
    params = {"Dense_0": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}}
    grads = jax.tree.map(lambda p: jnp.cos(p) * 3.0, params)
    for clip in (None, 0.5):
        inner = optax.adam(1e-2, eps=1e-6)
        if clip is not None:
            inner = optax.chain(optax.clip_by_global_norm(clip), inner)
        kw = {"total_steps": 10, "sparsity": 0.5}
        ours = build.wrapped_adam(ctl.make("dense"), lr=1e-2, eps=1e-6, max_grad_norm=clip, **kw)
        theirs = wrap_mod.wrap(inner, ctl.make("dense"), **kw)

        @jax.jit
        def step(g, tx=ours):
            return tx.update(g, tx.init(params), params)[0]

        want = theirs.update(grads, theirs.init(params), params)[0]
        assert_tree_equal(step(grads), want)
        batched = jax.vmap(step)(jax.tree.map(lambda g: jnp.stack([g, 2 * g]), grads))
        assert jax.tree.leaves(batched)[0].shape == (2, 3, 4)
    with pytest.raises(ValueError, match="eps must be > 0"):
        build.wrapped_adam(ctl.make("dense"), lr=1e-2, eps=0.0, total_steps=10)


# ---------------------------------------------------------------------------------------------
# every host returns a Program


@pytest.mark.slow  # CI time; the PPO host is covered by tests/test_ppo_host.py
def test_ppo_host_is_driven_like_any_program(tmp_path):
    from emrakul.lab.hosts.ppo_host import PPOHostConfig, make_ppo

    ppo = make_ppo(PPOHostConfig(total_env_steps=2_048, every=16, controller="gmp", sparsity=0.9))
    program = ppo.program
    assert program.num_intervals == ppo.num_intervals == 4 and program.init is ppo.init
    ck = driver.Checkpoints(str(tmp_path / "ppo"))
    assert driver.drive(program, [0, 1], chunk=2, checkpoints=ck, max_chunks=1) is None
    resumed = driver.drive(program, [0, 1], chunk=2, checkpoints=ck)
    # the same program object: the resumed call reuses the jitted chunk (a restored state
    # carries no weak types, which may trace it once more)
    assert resumed.resumed_from == 2 and resumed.compilations <= 2
    # an uninterrupted drive reuses the same compiled chunk (no second program to compile)
    metrics = driver.drive(program, [0, 1], chunk=2).metrics
    for field in metrics._fields:
        np.testing.assert_allclose(getattr(resumed.metrics, field), getattr(metrics, field),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(resumed.final["intervals"], [4, 4])
    assert "sparsity" in program.describe(resumed.metrics)


def test_classifier_and_dqn_return_programs():
    from emrakul.lab.hosts import dqn
    from emrakul.lab.loop import make_train
    from experiments.configs.default import get_config

    c = get_config()
    c.train.steps, c.prune.every, c.data.num_samples = 40, 10, 600
    trainer = make_train(c, "gmp")
    assert trainer.program.num_intervals == 4 and trainer.program.loss_field == "train_loss"
    assert trainer.program.run is trainer.run
    config = dqn.DQNConfig(env_name="CartPole-v1", total_env_steps=1_800, learning_starts=200,
                           buffer_size=2_000, prune_every=50, target_update_every=50)  # fmt: skip
    program = dqn.make_dqn(config, "gmp").program
    assert program.num_intervals == dqn.count_intervals(config) == 8
    assert program.metrics_type is dqn.DQNMetrics and program.loss_field == "loss"
