"""The compiled loop, the chunked runner, checkpoints/resume, NaN stop and config errors."""

import logging
import os
import shutil

import numpy as np
import pytest

from emrakul.lab.loop import make_train
from emrakul.lab.runner import NonFiniteLossError, run_controller
from experiments.configs.default import get_config


def tiny_config():
    c = get_config()
    c.host.width = [32]
    c.data.num_samples = 600
    c.train.steps = 80
    c.train.batch_size = 32
    c.prune.every = 10
    c.prune.sparsity = 0.8
    return c


def assert_same(a, b):
    for field in a.metrics._fields:
        np.testing.assert_array_equal(getattr(a.metrics, field), getattr(b.metrics, field))
    for k in a.test:
        np.testing.assert_array_equal(a.test[k], b.test[k])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("full"))
    return work, run_controller(tiny_config(), "rigl", seeds=2, workdir=work, chunk=2,
                                progress=False)  # fmt: skip


def test_run_reaches_target_and_records_metrics(full_run):
    _, r = full_run
    assert r.metrics.step.shape == (2, 8)
    np.testing.assert_array_equal(r.metrics.step[0], np.arange(1, 9) * 10)
    np.testing.assert_allclose(r.metrics.sparsity[:, -1], 0.8, atol=1e-3)
    assert (r.test["accuracy"] > 0.1).all()
    assert r.layer_names == ("Dense_0/kernel", "Dense_1/kernel")
    assert r.compilations == 1  # four chunks, one compiled program


def test_interrupted_run_resumes_to_identical_metrics(full_run, tmp_path):
    _, full = full_run
    work = str(tmp_path)
    assert run_controller(tiny_config(), "rigl", seeds=2, workdir=work, chunk=2,
                          progress=False, max_chunks=2) is None  # fmt: skip
    resumed = run_controller(tiny_config(), "rigl", seeds=2, workdir=work, chunk=2,
                             progress=False)  # fmt: skip
    assert resumed.resumed_from == 2
    assert_same(full, resumed)


def test_damaged_checkpoint_falls_back_to_previous(full_run, tmp_path, caplog):
    src, full = full_run
    work = str(tmp_path / "w")
    shutil.copytree(src, work)
    ckdir = os.path.join(work, "checkpoints", "rigl")
    latest = max(int(d) for d in os.listdir(ckdir) if d.isdigit())
    for root, _, files in os.walk(os.path.join(ckdir, str(latest))):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with caplog.at_level(logging.WARNING):
        again = run_controller(tiny_config(), "rigl", seeds=2, workdir=work, chunk=2,
                               progress=False)  # fmt: skip
    assert any("damaged" in rec.getMessage() for rec in caplog.records)
    assert again.resumed_from == latest - 1
    assert_same(full, again)


def test_nan_loss_stops_with_clear_message(tmp_path):
    c = tiny_config()
    c.train.lr = 1e38
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        run_controller(c, "gmp", seeds=1, workdir=str(tmp_path), chunk=2, progress=False)


@pytest.mark.slow  # CI time; the map seed loop is covered bit-for-bit by tests/test_sharding.py
def test_map_seed_loop_reproduces_each_seed_run_alone(tmp_path, monkeypatch):
    """``seed_loop="map"`` runs every seed through the same one-seed program, so seed 1 of a
    2-seed run equals seed 1 run alone bit for bit (a vmapped run need not)."""
    from emrakul.lab import sharding as shd

    loops = []
    lift = shd.over_seeds

    def spy(fn, loop="vmap", mesh=None):
        loops.append(loop)
        return lift(fn, loop, mesh)

    monkeypatch.setattr(shd, "over_seeds", spy)
    c = tiny_config()
    work = str(tmp_path)
    pair = run_controller(c, "rigl", seeds=2, chunk=2, workdir=work, progress=False,
                          seed_loop="map")  # fmt: skip
    assert set(loops) == {"map"}
    loops.clear()
    c.run.seed_loop = "map"  # the config field does the same
    alone = run_controller(c, "rigl", seeds=1, seed_offset=1, chunk=2, progress=False)
    assert set(loops) == {"map"}
    for field in pair.metrics._fields:
        np.testing.assert_array_equal(
            getattr(pair.metrics, field)[1:], getattr(alone.metrics, field)
        )
    for k in pair.test:
        np.testing.assert_array_equal(pair.test[k][1:], alone.test[k])
    assert pair.compilations == 1
    with pytest.raises(ValueError, match="seed_loop must be one of"):
        run_controller(c, "rigl", seeds=1, progress=False, seed_loop="pmap")
    # the map run's checkpoints are not resumed by a vmapped run (nor the other way round)
    with pytest.raises(ValueError, match="written with seed_loop='map'"):
        run_controller(c, "rigl", seeds=2, chunk=2, workdir=work, progress=False,
                       seed_loop="vmap")  # fmt: skip
    again = run_controller(c, "rigl", seeds=2, chunk=2, workdir=work, progress=False)
    assert again.resumed_from > 0
    np.testing.assert_array_equal(again.test["accuracy"], pair.test["accuracy"])


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("prune.sparsity", 1.0, "config.prune.sparsity"),
        ("prune.sparsity", -0.1, "config.prune.sparsity"),
        ("prune.every", 0, "config.prune.every"),
        ("controller", "magic", "config.controller"),
        ("prune.structure", "blocks", "prune.structure"),
        ("prune.structure", "nm:1:3", "does not divide layer"),
        ("prune.structure", "nm:2:4", "fixes the sparsity at 0.5"),
        ("prune.distribution", "zipf", "config.prune.distribution"),
        ("host.kind", "rnn", "config.host.kind"),
    ],
)
def test_invalid_config_fails_before_compiling(field, value, match):
    c = tiny_config()
    node = c
    parts = field.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    if value == "nm:1:3":  # consistent sparsity, so that the error is the group not dividing
        c.prune.sparsity = 2 / 3
    with pytest.raises(ValueError, match=match):
        make_train(c)
