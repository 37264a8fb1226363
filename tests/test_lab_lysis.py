"""Lysis between chunks in the lab driver (``prune.structure='groups'``, ``lysis.every``)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from emrakul.lab import driver, loop
from emrakul.lab import driver_lysis as dly
from emrakul.lab import sharding as shd
from emrakul.lab.program import Lysis
from experiments.configs import default


def _config(every: int):
    c = default.get_config()
    c.host.width = (32, 32)
    c.data.num_samples = 600
    c.train.steps = 300  # 15 intervals of 20 steps, 5 chunks of 3
    c.prune.every = 20
    c.prune.sparsity = 0.75
    c.prune.structure = "groups"
    c.controller = "gmp"
    c.controllers.gmp = {"start": 0.1, "end": 0.5}  # the ramp ends at step 150
    c.lysis.every = every
    c.lysis.multiple_of = 8
    return c


@pytest.mark.timeout(600)
def test_a_run_that_lyses_between_chunks_trains_on_as_the_masked_run(tmp_path):
    seeds = [0, 1]
    masked = driver.drive(loop.make_train(_config(0)).program, seeds, chunk=3)
    assert masked.lyses == 0 and masked.compilations == 1
    # lysis after the third chunk (step 180, past the ramp), then stopped after the fourth...
    program = loop.make_train(_config(3)).program
    where = driver.Checkpoints(str(tmp_path / "ckpt"))
    assert driver.drive(program, seeds, chunk=3, checkpoints=where, max_chunks=4) is None
    events = dly.read_events(where.directory)
    assert [step for step, _ in events] == [9]  # the checkpoint after the third chunk on
    plan = events[0][1]["plan"]
    removed = {path: len(cuts[0][1]) for path, cuts in plan.items() if "kernel" in path}
    # GMP at 75% leaves 8 of 32 units per layer: the 24 others leave their kernels' columns
    assert removed["['params']['Dense_0']['kernel']"] == 24
    assert removed["['params']['Dense_1']['kernel']"] == 24
    with open(dly.events_path(where.directory)) as f:
        assert json.load(f)["events"][0]["record"]["leaders"]
    # ... and resumed: the smaller program is rebuilt from the record and restored into
    run = driver.drive(loop.make_train(_config(3)).program, seeds, chunk=3, checkpoints=where)
    assert run.resumed_from == 12 and run.lyses == 0
    for field in ("train_loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(
            getattr(run.metrics, field), getattr(masked.metrics, field), rtol=1e-5, atol=1e-6
        )
    for key in masked.final:
        np.testing.assert_allclose(run.final[key], masked.final[key], rtol=1e-5, atol=1e-6)
    # sparsity also counts the input rows removed with the units they read from
    after = np.asarray(run.metrics.sparsity)[:, 9:]
    assert (after >= np.asarray(masked.metrics.sparsity)[:, 9:] - 1e-6).all()
    np.testing.assert_allclose(np.asarray(run.metrics.layer_sparsity)[:, -1, 0], 0.75)


def test_lysis_config_errors_name_the_field():
    c = _config(1)
    c.prune.structure = "units"
    with pytest.raises(ValueError, match=r"lysis.every.*prune.structure='groups'"):
        loop.make_train(c)
    c = _config(1)
    c.lysis.multiple_of = 0
    with pytest.raises(ValueError, match=r"lysis\.multiple_of"):
        loop.make_train(c)
    c = _config(-1)
    with pytest.raises(ValueError, match=r"lysis\.every"):
        loop.make_train(c)
    with pytest.raises(ValueError, match=r"lysis\.every: controller 'magistrate'"):
        loop.make_train(_config(1), "magistrate")


def test_events_say_which_program_wrote_each_checkpoint(tmp_path):
    masked = loop.make_train(_config(0)).program

    def _stub(name: str):
        return masked._replace(describe=name)  # a program told apart by its describe

    base = masked._replace(
        describe="base", lysis=Lysis(1, lambda s: None, lambda r: _stub(r["name"]))
    )
    directory = str(tmp_path / "ckpt")
    assert dly.read_events(directory) == [] and dly.program_at(base, [], 5) is base
    events = dly.write_event(directory, [], 4, {"name": "a"})
    events = dly.write_event(directory, events, 8, {"name": "b"})
    assert dly.read_events(directory) == [(4, {"name": "a"}), (8, {"name": "b"})]
    assert [dly.program_at(base, events, s).describe for s in (3, 4, 7, 9)] == [
        "base", "a", "a", "b"
    ]  # fmt: skip
    # a run redone from step 6 replaces what an interrupted one recorded after it
    assert dly.write_event(directory, events, 6, {"name": "c"}) == [(4, {"name": "a"}),
                                                                   (6, {"name": "c"})]  # fmt: skip
    assert dly.due(base, 2) and not dly.due(_stub("x"), 2)
    # a program without lysis refuses checkpoints of one that lysed
    with pytest.raises(ValueError, match="written by a run that lysed"):
        dly.start_events(_stub("x"), directory)
    # resumed at step 5: the later event goes; started afresh: the record goes with the run
    assert dly.settle_events(directory, events, 5) == [(4, {"name": "a"})]
    assert dly.read_events(directory) == [(4, {"name": "a"})]
    assert dly.settle_events(directory, dly.start_events(base, directory), None) == []
    assert not os.path.exists(dly.events_path(directory))
    mesh = shd.seed_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="lyses between chunks cannot run on a mesh"):
        driver.drive(base, [0], chunk=1, mesh=mesh)
