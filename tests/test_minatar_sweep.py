"""Tests of the resumable MinAtar sweep (``emrakul.lab.sweeps.minatar`` and its app
``experiments.minatar_sweep``), with CartPole standing in
for the MinAtar games so that a whole sweep (two cells, one interrupted and resumed) runs in
about 45 s of CPU time (each cell compiles once; the resumed cell reuses its compiled chunk)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from absl import flags

from emrakul.lab.report import iqm
from emrakul.lab.rl_cell import chunk_size
from emrakul.lab.sweeps import minatar as ms
from experiments import minatar_sweep as app_ms
from experiments.configs import minatar

INTERVALS = 8  # (1_800 - 200 warm-up) / (50 updates * 4 env steps)


def tiny_config(**top):
    """Two seeds of dense and gmp @0.9 on CartPole, 8 surgery intervals in chunks of 2."""
    c = minatar.get_config()
    c.games, c.arms, c.widths, c.sparsities = "CartPole-v1", "dense,gmp", "1", "0.9"
    c.seeds, c.chunk = 2, 2
    c.dqn.update(
        total_env_steps=1_800,
        learning_starts=200,
        buffer_size=2_000,
        prune_every=50,
        target_update_every=50,
        lr=5e-4,
        adam_eps=1e-8,
        prune_start=0.5,  # no surgery cuts anything before update 200 (interval 4)
    )
    for k, v in top.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Runs the tiny sweep interrupted after one chunk, then to the end; keeps what it saw."""
    workdir = str(tmp_path_factory.mktemp("minatar_sweep"))
    first = ms.run_sweep(tiny_config(), workdir, progress=False, max_chunks=1)
    after_first = {
        "rows": len(ms.read_results(workdir)),
        "checkpoints": sorted(os.listdir(os.path.join(workdir, "checkpoints"))),
    }
    second = ms.run_sweep(tiny_config(), workdir, progress=False)
    return workdir, first, after_first, second


def neutral_policy(path: str) -> str:
    """Writes an exactly neutral Magistrate policy file (zero heads) as experiments.train_agent
    writes one; the plan network's parameters do not depend on the host, so a classifier's probe
    observation makes parameters that a DQN host can use."""
    from emrakul.agent.plan_network import PlanNetwork
    from emrakul.controllers.magistrate import save_policy
    from emrakul.controllers.plan_space import PlanSpace
    from emrakul.lab.meta import es_train
    from experiments.configs.default import get_config

    classifier = get_config()
    classifier.host.width = (16, 16)
    classifier.data.num_samples = 600
    params = es_train.template_params(classifier, PlanNetwork())
    save_policy(path, params, PlanNetwork(), PlanSpace.breathing())
    return path


def _read(path):
    with open(path) as f:
        return f.read()


def _rows(workdir, arm):
    return sorted((r for r in ms.read_results(workdir) if r["arm"] == arm), key=lambda r: r["seed"])


def test_interrupted_cell_keeps_a_checkpoint_and_writes_no_rows(sweep):
    _, first, after_first, _ = sweep
    assert [s.status for s in first] == ["interrupted"]
    assert after_first["rows"] == 0
    assert after_first["checkpoints"] == ["CartPole-v1_dense_s0_w1_seeds0-1"]


def test_results_rows(sweep):
    workdir, _, _, second = sweep
    assert [(s.cell.arm, s.status) for s in second] == [("dense", "done"), ("gmp", "done")]
    rows = ms.read_results(workdir)
    assert len(rows) == 4
    assert sorted((r["arm"], r["sparsity"], r["seed"]) for r in rows) == [
        ("dense", 0.0, 0), ("dense", 0.0, 1), ("gmp", 0.9, 0), ("gmp", 0.9, 1),
    ]  # fmt: skip
    for r in rows:
        assert r["game"] == "CartPole-v1" and r["width"] == 1 and r["pooling"] == "flatten"
        assert r["env_steps"] == 1_800 and r["updates"] == INTERVALS * 50
        assert r["wall_seconds"] > 0 and r["cell_seeds"] == 2
        curve = r["curve"]
        assert curve["env_steps"] == [200 + 200 * (i + 1) for i in range(INTERVALS)]
        assert all(len(v) == INTERVALS for v in curve.values())
        # final return: the episodes of the last 10% of the intervals (here the last one)
        assert r["final_episodes"] == curve["episodes"][-1] > 0
        assert r["final_return"] == pytest.approx(curve["mean_return"][-1], rel=1e-5)
    assert all(abs(r["final_sparsity"]) < 1e-6 for r in _rows(workdir, "dense"))
    assert all(r["final_sparsity"] == pytest.approx(0.9, abs=0.01) for r in _rows(workdir, "gmp"))
    assert not os.listdir(os.path.join(workdir, "checkpoints"))  # removed once a cell is done


def test_resumed_cell_continues_the_same_run(sweep):
    workdir, _, _, second = sweep
    assert second[0].resumed_from == 2 and second[1].resumed_from == 0  # one chunk restored
    # Before any weight is cut (intervals 0-3) dense and gmp run the same program from the same
    # keys, so the resumed dense cell (intervals 2-3 after the restore) must match the
    # uninterrupted gmp cell exactly.
    for d, g in zip(_rows(workdir, "dense"), _rows(workdir, "gmp"), strict=True):
        assert max(g["curve"]["sparsity"][:4]) < 1e-6
        assert d["curve"]["episodes"][:4] == g["curve"]["episodes"][:4]
        np.testing.assert_allclose(d["curve"]["mean_return"][:4], g["curve"]["mean_return"][:4])
        np.testing.assert_allclose(d["curve"]["loss"][:4], g["curve"]["loss"][:4], rtol=1e-5)


def test_second_invocation_reruns_nothing(sweep):
    workdir, *_ = sweep
    path = os.path.join(workdir, ms.RESULTS)
    before = (os.path.getmtime(path), _read(path))
    again = ms.run_sweep(tiny_config(), workdir, progress=False)
    assert [s.status for s in again] == ["skipped", "skipped"]
    assert (os.path.getmtime(path), _read(path)) == before


def test_report_normalises_by_dense_width_1(sweep):
    workdir, *_ = sweep
    text = _read(os.path.join(workdir, "summary.md"))
    assert "IQM" in text and "stratified-bootstrap" in text
    assert "Environment steps per run: 1,800" in text and "Seeds per cell: 2" in text
    assert os.path.exists(os.path.join(workdir, "curves_CartPole-v1.png"))
    summary = json.loads(_read(os.path.join(workdir, "summary.json")))
    dense = np.mean([r["final_return"] for r in _rows(workdir, "dense")])
    gmp = [r["final_return"] / dense for r in _rows(workdir, "gmp")]
    assert summary["baselines"] == {"CartPole-v1": pytest.approx(dense)}
    got = summary["normalised"][f"gmp {ms.X}1 @0.9"]
    assert got["iqm"] == pytest.approx(iqm(gmp)) and got["runs"] == 2
    assert got["ci95"][0] <= got["iqm"] <= got["ci95"][1]
    assert summary["normalised"][f"dense {ms.X}1"]["mean"] == pytest.approx(1.0)


def test_report_only_command_line(sweep, capsys):
    workdir, *_ = sweep
    os.remove(os.path.join(workdir, "summary.md"))
    fv = flags.FlagValues()  # a private flag set: the test leaves absl's global flags alone
    argv = ["minatar_sweep", f"--workdir={workdir}", "--report_only", "--config.games=CartPole-v1"]
    app_ms.define_flags(fv, argv)
    fv(argv)
    app_ms.main([], fv)
    assert fv.config.games == "CartPole-v1"
    assert "IQM" in capsys.readouterr().out
    assert os.path.exists(os.path.join(workdir, "summary.md"))


def test_empty_magistrate_policy_is_the_shipped_one(tmp_path, monkeypatch):
    """An empty magistrate.policy deploys the policy shipped in the package; without one the
    plan is refused before anything runs, naming --config.magistrate.policy."""
    import importlib

    mg = importlib.import_module("emrakul.controllers.magistrate")  # the module, not the factory
    config = tiny_config(arms="dense,magistrate")
    monkeypatch.setattr(mg, "SHIPPED", str(tmp_path / "none.msgpack"))
    with pytest.raises(ValueError, match=r"config.magistrate.policy is empty"):
        ms.make_plan(config)
    monkeypatch.setattr(mg, "SHIPPED", neutral_policy(str(tmp_path / "shipped.msgpack")))
    plan = ms.make_plan(config)
    assert [(c.arm, c.controller) for c in plan.cells] == [
        ("dense", "dense"), ("magistrate", "magistrate"),
    ]  # fmt: skip
    assert not plan.skipped and plan.policy_of(plan.cells[1]) == ""


def test_changed_settings_are_refused(sweep):
    workdir, *_ = sweep
    config = tiny_config()
    config.dqn.total_env_steps = 2_000
    with pytest.raises(ValueError, match=r"config.dqn.total_env_steps"):
        ms.run_sweep(config, workdir, progress=False)


def test_normalisation_and_incomplete_groups():
    def row(game, arm, width, sp, seed, ret):
        return {"game": game, "arm": arm, "width": width, "sparsity": sp, "seed": seed,
                "final_return": ret}  # fmt: skip

    rows = [
        row("A", "dense", 1, 0.0, 0, 10.0), row("A", "dense", 1, 0.0, 1, 30.0),
        row("B", "dense", 1, 0.0, 0, 2.0), row("B", "dense", 1, 0.0, 1, 2.0),
        row("A", "dense", 2, 0.0, 0, 40.0), row("A", "dense", 2, 0.0, 1, 40.0),
        row("B", "dense", 2, 0.0, 0, 1.0), row("B", "dense", 2, 0.0, 1, 3.0),
        row("A", "gmp", 1, 0.9, 0, 20.0), row("A", "gmp", 1, 0.9, 1, 20.0),
        row("C", "dense", 2, 0.0, 0, 5.0),  # C has no dense x1 baseline
    ]  # fmt: skip
    norm = ms.normalised_scores(rows, ["A", "B", "C"])
    assert norm.games == ["A", "B"] and norm.baselines == {"A": 20.0, "B": 2.0}
    assert "C" in norm.unusable
    np.testing.assert_allclose(norm.scores[("dense", 2, 0.0)], [[2.0, 0.5], [2.0, 1.5]])
    np.testing.assert_allclose(norm.scores[("dense", 1, 0.0)], [[0.5, 1.0], [1.5, 1.0]])
    assert norm.incomplete == {("gmp", 1, 0.9): ["B"]}
    more = {"env_steps": 1, "total_env_steps": 1, "final_sparsity": 0, "wall_seconds": 1.0,
            "curve": {}}  # fmt: skip
    text, _ = ms.summary_markdown([{**r, **more} for r in rows])
    assert f"gmp {ms.X}1 @0.9 lacks B" in text and "Not normalisable: C" in text
    # the IQM table (bootstrap CIs included) does not depend on the games' display order
    again, _ = ms.summary_markdown([{**r, **more} for r in rows[::-1]])
    assert ms.normalised_scores(rows[::-1], ["B", "A"]).games == ["A", "B"]
    assert text[text.index("| arm | width | sparsity | runs"):] == again[
        again.index("| arm | width | sparsity | runs"):]  # fmt: skip


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("games", "NoSuchGame-v0", "config.games"),
        ("arms", "dense,nope", "config.arms"),
        ("widths", "1,0", "config.widths"),
        ("sparsities", "0.9,1.0", "config.sparsities"),
        ("seeds", 0, "config.seeds"),
        ("chunk", 0, "config.chunk"),
        ("pooling", "max", "config.pooling"),
        ("final_fraction", 0.0, "config.final_fraction"),
    ],
)
def test_bad_fields_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        ms.make_plan(tiny_config(**{field: value}))


def test_bad_dqn_fields_and_policy_path_are_named():
    config = tiny_config()
    config.dqn.lr = 0.0
    with pytest.raises(ValueError, match="lr"):
        ms.make_plan(config)
    config = tiny_config()
    config.dqn.sparsity = 0.5
    with pytest.raises(ValueError, match=r"config.dqn.sparsity"):
        ms.make_plan(config)
    config = tiny_config(arms="gmp,magistrate")
    config.magistrate.policy = "/no/such/agent"
    with pytest.raises(ValueError, match=r"config.magistrate.policy"):
        ms.make_plan(config)


def test_plan_cells_and_chunks():
    plan = ms.make_plan(
        tiny_config(arms="dense,gmp,dense_gap", widths="1,2", sparsities="0.95,0.9")
    )
    assert [(c.arm, c.sparsity, c.width) for c in plan.cells] == [
        ("dense", 0.0, 1), ("gmp", 0.95, 1), ("gmp", 0.9, 1),
        ("dense", 0.0, 2), ("gmp", 0.95, 2), ("gmp", 0.9, 2),
    ]  # dense once per width; no gap arm on CartPole (an MLP)  # fmt: skip
    assert any("dense_gap" in m for m in plan.skipped)
    minatar_plan = ms.make_plan(tiny_config(games="Breakout-MinAtar", arms="gmp_gap"))
    assert ms.cell_config(minatar_plan, minatar_plan.cells[0]).pooling == "gap"
    assert chunk_size(124, 10) == 10 and chunk_size(49, 10) == 7 and chunk_size(8, 20) == 8


def test_curve_stats_drop_intervals_without_episodes():
    """Freeway's episodes outlast a surgery interval: intervals where no seed finished one are
    dropped (a line with a NaN every other point draws nothing), partial ones use the seeds
    that did."""
    rows = [
        {"curve": {"env_steps": [10, 20, 30, 40], "mean_return": [None, 1.0, None, 3.0]}},
        {"curve": {"env_steps": [10, 20, 30, 40], "mean_return": [None, 2.0, 4.0, 5.0]}},
    ]
    x, mean, ci = ms.curve_stats(rows)
    np.testing.assert_array_equal(x, [20, 30, 40])
    np.testing.assert_allclose(mean, [1.5, 4.0, 4.0])
    assert np.isfinite(ci[0]) and ci[0] > 0 and ci[1] == 0.0  # one seed: no interval, drawn as 0


@pytest.mark.slow  # ~30 s of CI: a MinAtar Magistrate cell (the shipped-policy arm stays in CI)
def test_named_policies_add_magistrate_arms(tmp_path):
    """``magistrate.policies`` NAME=PATH adds the arm magistrate_NAME, which deploys that policy;
    a run of it lands in results.jsonl under its own arm, with the magistrate controller."""
    config = tiny_config(arms="magistrate_rl")
    config.seeds = 1
    with pytest.raises(ValueError, match=r"policies=rl=WORKDIR/policy\.msgpack"):
        ms.make_plan(config)
    config.magistrate.policies = "rl"
    with pytest.raises(ValueError, match="not NAME=PATH"):
        ms.make_plan(config)
    config.magistrate.policies = f"rl={tmp_path}"  # a directory, e.g. an old agent checkpoint
    with pytest.raises(ValueError, match=r"is not a file; pass experiments\.train_agent's WORKDIR"):
        ms.make_plan(config)
    # an exactly neutral policy (zero heads) saved as experiments.train_agent saves one
    path = neutral_policy(str(tmp_path / "policy.msgpack"))
    config.magistrate.policies = f"rl={path}"
    plan = ms.make_plan(config)
    (cell,) = plan.cells
    assert (cell.arm, cell.controller, plan.policy_of(cell)) == (
        "magistrate_rl",
        "magistrate",
        path,
    )
    workdir = str(tmp_path / "sweep")
    (status,) = ms.run_sweep(config, workdir, progress=False)
    assert status.status == "done"
    (row,) = ms.read_results(workdir)
    assert (row["arm"], row["controller"]) == ("magistrate_rl", "magistrate")
    assert np.isfinite(row["final_return"])
