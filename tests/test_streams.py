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


def tiny_config(arms="dense,continual_backprop,gmp"):
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
    c = tiny_config()
    whole = stream_sweep.run_arm(c, "gmp", workdir=None, progress=False)
    m = whole.metrics
    assert m.test_accuracy.shape == (2, 4)
    np.testing.assert_array_equal(m.step[0], [20, 40, 60, 80])
    assert np.all((m.dormant >= 0) & (m.dormant <= 1))
    assert np.all((m.effective_rank > 0) & (m.effective_rank <= 16))
    assert m.sparsity[0, 0] > 0 and np.allclose(m.sparsity[:, -1], 0.9, atol=0.01)
    # interrupted after one chunk, resumed: the same metrics as the uninterrupted run
    assert (
        stream_sweep.run_arm(c, "gmp", workdir=str(tmp_path), progress=False, max_chunks=1) is None
    )
    resumed = stream_sweep.run_arm(c, "gmp", workdir=str(tmp_path), progress=False)
    assert resumed.resumed_from > 0
    jax.tree.map(np.testing.assert_array_equal, resumed.metrics, m)


def test_stream_arms_share_the_stream_and_the_report_pairs_them(tmp_path):
    c = tiny_config("dense,continual_backprop")
    results = [
        stream_sweep.run_arm(c, a, workdir=None, progress=False)
        for a in ("dense", "continual_backprop")
    ]
    summary = stream_report.write(str(tmp_path), results, window=2)
    table = stream_report.markdown(summary)
    assert "| dense | 2 |" in table and "| continual_backprop | 2 |" in table
    dense_last = np.asarray(summary["dense"]["last_per_seed"])
    cbp_last = np.asarray(summary["continual_backprop"]["last_per_seed"])
    np.testing.assert_allclose(summary["continual_backprop"]["last_minus_dense"]["mean"],
                               (cbp_last - dense_last).mean(), rtol=1e-6)  # fmt: skip
    for name in ("metrics.jsonl", "summary.json", "summary.md", "accuracy_by_task.png",
                 "plasticity_signs.png"):  # fmt: skip
        assert os.path.exists(tmp_path / name)
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(x) for x in f]
    assert len(rows) == 2 * 2 * 4 and {"online_accuracy", "dormant"} <= set(rows[0])


def test_stream_config_errors_name_the_field():
    c = tiny_config()
    c.stream.task_steps = 25
    with pytest.raises(ValueError, match=r"stream\.task_steps=25 must be a multiple"):
        stream_sweep.check_config(c, ["dense"])
    c = tiny_config()
    c.stream.kind = "nope"
    with pytest.raises(ValueError, match=r"stream\.kind"):
        stream_sweep.check_config(c, ["dense"])
    with pytest.raises(ValueError, match="unknown controller"):
        stream_sweep.check_config(tiny_config(), ["nope"])
