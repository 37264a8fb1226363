"""Streams (permuted labels, permuted inputs, drift) and the stream program: transforms, the
per-task measurements against NumPy, resumption, and the app."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.lab import stream_loop as sl
from emrakul.lab.hosts import streams
from emrakul.lab.sweeps import stream as stream_sweep
from emrakul.lab.sweeps import stream_report
from experiments.configs import stream as stream_config

KEY = jax.random.PRNGKey(0)
X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 40)), jnp.float32)
Y = jnp.arange(6, dtype=jnp.int32)


def labels_at(stream, step):
    return np.asarray(streams.transform(stream, KEY, step, X, Y)[1])


def test_permuted_labels_change_at_task_switches_only():
    s = streams.Stream("permuted_labels", num_tasks=5, task_steps=10)
    first = [labels_at(s, t) for t in range(10)]
    assert all(np.array_equal(first[0], f) for f in first)  # constant within a task
    maps = [np.asarray(streams.transform(s, KEY, 10 * t, X, jnp.arange(10))[1]) for t in range(5)]
    for m in maps:
        assert sorted(m.tolist()) == list(range(10))  # a permutation of the classes
    assert len({tuple(m) for m in maps}) == 5
    np.testing.assert_array_equal(np.asarray(streams.transform(s, KEY, 3, X, Y)[0]), X)


def test_permuted_inputs_permute_positions_per_task():
    s = streams.Stream("permuted_inputs", num_tasks=3, task_steps=4)
    x0 = np.asarray(streams.transform(s, KEY, 0, X, Y)[0])
    x1 = np.asarray(streams.transform(s, KEY, 4, X, Y)[0])
    np.testing.assert_array_equal(np.sort(x0, axis=1), np.sort(np.asarray(X), axis=1))
    assert not np.array_equal(x0, x1)
    np.testing.assert_array_equal(x0, np.asarray(streams.transform(s, KEY, 3, X, Y)[0]))


def test_drift_is_smooth_and_keeps_labels():
    s = streams.Stream("drift", num_tasks=30, task_steps=100)
    shift, gain = np.asarray(jax.vmap(lambda t: jnp.stack(streams._drift(s, KEY, t)))(
        jnp.arange(3000)
    )).T  # fmt: skip
    # no sharp boundary: under 0.1 positions and 0.01 log-gain per step, but it moves
    assert np.abs(np.diff(shift)).max() < 0.1 and np.abs(np.diff(gain)).max() < 0.01
    assert np.ptp(shift) > 2.0 and np.ptp(gain) > 0.1
    assert np.abs(shift).max() <= 10.0 and np.abs(gain).max() <= 0.7
    x = np.asarray(streams.transform(s, KEY, 1234, X, Y)[0])
    ref = np.exp(gain[1234]) * np.asarray(streams._roll(X, jnp.float32(shift[1234])))
    np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels_at(s, 1234), np.asarray(Y))


def test_fractional_roll_matches_numpy():
    x = np.arange(40, dtype=np.float32)[None]
    out = np.asarray(streams._roll(jnp.asarray(x), jnp.float32(2.25)))
    ref = 0.75 * np.roll(x, 2, axis=1) + 0.25 * np.roll(x, 3, axis=1)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize(
    "stream,match",
    [
        (streams.Stream("shuffled", 3, 10), "stream.kind"),
        (streams.Stream("drift", 0, 10), "stream.num_tasks"),
        (streams.Stream("drift", 3, 2.5), "stream.task_steps"),
        (streams.Stream("drift", 3, 10, shift=-1.0), "stream.shift"),
    ],
)
def test_check_stream_names_the_field(stream, match):
    with pytest.raises(ValueError, match=match):
        streams.check_stream(stream)


def test_effective_rank_matches_numpy_under_vmap(rng):
    h = rng.normal(size=(3, 50, 8)) * np.array([5.0, 1.0, 0.1, 0, 0, 0, 0, 0])
    out = np.asarray(jax.jit(jax.vmap(sl.effective_rank))(jnp.asarray(h, jnp.float32)))
    for i in range(3):
        s = np.linalg.svd(h[i], compute_uv=False)
        p = s[s > 0] / s.sum()
        np.testing.assert_allclose(out[i], np.exp(-np.sum(p * np.log(p))), rtol=1e-4)
    assert float(sl.effective_rank(jnp.zeros((4, 3)))) == 0.0
    assert np.isnan(float(sl.effective_rank(jnp.full((4, 3), jnp.inf))))


def tiny_config(arms="dense,continual_backprop"):
    c = stream_config.get_config()
    c.compare = arms
    c.seeds = 2
    c.host.width = (16, 16)
    c.data.num_samples = 500
    c.stream.num_tasks = 4
    c.stream.task_steps = 20
    c.prune.every = 10
    c.run.chunk = 2
    return c


def test_stream_program_measures_every_task_and_resumes(tmp_path):
    """Continual backprop (a remedy that reads activation statistics) on the stream program:
    the per-task measurements, and an interrupted run resumed to the same metrics."""
    c = tiny_config()
    whole = stream_sweep.run_arm(c, "continual_backprop", workdir=None, progress=False)
    m = whole.metrics
    assert m.test_accuracy.shape == (2, 4)
    np.testing.assert_array_equal(m.step[0], [20, 40, 60, 80])
    assert np.all((m.dormant >= 0) & (m.dormant <= 1))
    assert np.all((m.effective_rank > 0) & (m.effective_rank <= 16))
    assert np.all(m.sparsity == 0) and np.all(m.alive == m.alive[0, 0])
    assert not np.array_equal(m.test_accuracy[0], m.test_accuracy[1])  # seeds differ
    kw = {"workdir": str(tmp_path), "progress": False}
    assert stream_sweep.run_arm(c, "continual_backprop", max_chunks=1, **kw) is None
    resumed = stream_sweep.run_arm(c, "continual_backprop", **kw)
    assert resumed.resumed_from > 0
    jax.tree.map(np.testing.assert_array_equal, resumed.metrics, m)


@pytest.mark.slow
def test_a_pruning_arm_reaches_its_target_on_the_stream():
    m = stream_sweep.run_arm(tiny_config(), "gmp", workdir=None, progress=False).metrics
    assert m.sparsity[0, 0] > 0 and np.allclose(m.sparsity[:, -1], 0.9, atol=0.01)


def fake_result(arm, acc, seeds=(0, 1)):
    acc = np.asarray(acc, np.float32)
    zeros = np.zeros_like(acc)
    fields = {f: zeros for f in sl.TaskMetrics._fields}
    fields.update(
        test_accuracy=acc, step=np.broadcast_to(np.arange(1, acc.shape[1] + 1), acc.shape)
    )
    return stream_sweep.ArmResult(arm, sl.TaskMetrics(**fields), seeds, 1.0, 0)


def test_the_report_pairs_arms_with_dense_and_writes_its_files(tmp_path):
    dense = fake_result("dense", [[0.6, 0.6, 0.5, 0.4], [0.7, 0.6, 0.6, 0.5]])
    cbp = fake_result("continual_backprop", [[0.6, 0.6, 0.6, 0.6], [0.6, 0.7, 0.7, 0.8]])
    summary = stream_report.write(str(tmp_path), [dense, cbp], window=2)
    np.testing.assert_allclose(summary["dense"]["first"]["mean"], 0.625)
    np.testing.assert_allclose(summary["dense"]["last"]["mean"], 0.5)
    np.testing.assert_allclose(
        summary["dense"]["plasticity"]["mean"], (0.45 / 0.6 + 0.55 / 0.65) / 2
    )
    np.testing.assert_allclose(summary["continual_backprop"]["last_minus_dense"]["mean"], 0.175)
    np.testing.assert_allclose(summary["dense"]["last_minus_best_remedy"]["mean"], -0.175)
    assert "last_minus_best_remedy" not in summary["continual_backprop"]
    table = stream_report.markdown(summary)
    assert "Best remedy on validation (last 2 tasks): continual_backprop." in table
    assert "| dense | 2 |" in table and "| continual_backprop | 2 | 0.625 ± " in table
    for name in ("metrics.jsonl", "summary.json", "summary.md", "accuracy_by_task.png",
                 "plasticity_signs.png"):  # fmt: skip
        assert os.path.exists(tmp_path / name)
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(x) for x in f]
    assert len(rows) == 2 * 2 * 4 and rows[5] == {**rows[5], "arm": "dense", "seed": 1, "task": 1}
    assert rows[5]["test_accuracy"] == pytest.approx(0.6)


def test_stream_config_errors_name_the_field():
    c = tiny_config()
    c.stream.task_steps = 25
    with pytest.raises(ValueError, match=r"stream\.task_steps=25 must be a multiple"):
        stream_sweep.check_config(c, ["dense"])
    c = tiny_config()
    c.stream.kind = "nope"
    with pytest.raises(ValueError, match=r"stream\.kind"):
        stream_sweep.check_config(c, ["dense"])
    assert stream_sweep.arm_names(" dense, gmp ,") == ["dense", "gmp"]
    assert stream_sweep.arm_names(["rigl"]) == ["rigl"]
    with pytest.raises(ValueError, match="at least one arm"):
        stream_sweep.arm_names(" , ")
    with pytest.raises(ValueError, match="unknown controller"):
        stream_sweep.check_config(tiny_config(), ["nope"])


def test_the_long_setting_and_combined_arms_validate():
    from emrakul.lab.build import make_controller
    from experiments.configs import stream_long

    c = stream_long.get_config()
    stream = stream_sweep.check_config(c, stream_sweep.arm_names(c.compare))
    assert (stream.num_tasks, stream.task_steps, c.train.lr) == (100, 1000, 1e-3)
    stream_sweep.check_config(tiny_config(), ["breathing+continual_backprop"])
    kwargs = {"breathing": {"start": 0.0, "end": 0.5}, "continual_backprop": {"maturity": 7}}
    both = make_controller("breathing+continual_backprop", kwargs)
    assert both.name == "breathing+continual_backprop" and both.needs_activations
    with pytest.raises(ValueError, match="unknown controller"):
        stream_sweep.check_config(tiny_config(), ["breathing+nope"])
