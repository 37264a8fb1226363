"""Tests of the resumable grid (``emrakul.lab.grid``): results files, locks, resumption, and that
results files written by the sweeps before they shared the grid still load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emrakul.lab import grid as g
from emrakul.lab.sweeps import classifier
from emrakul.lab.sweeps import minatar as ms


def _grid(workdir, results="results.jsonl", fields=None, **kw):
    return g.Grid(
        str(workdir),
        results,
        key=lambda c: c["name"] if isinstance(c, dict) else c,
        name=str,
        checkpoint=lambda cell, seeds: os.path.join(str(workdir), "ckpt", f"{cell}"),
        fields=fields,
        **kw,
    )


def test_jsonl_append_and_read_skips_a_damaged_line(tmp_path):
    path = str(tmp_path / "r.jsonl")
    assert g.read_rows(path) == []
    g.append_rows(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3, "cut by a ki')  # a kill mid-write
    g.append_rows(path, [{"a": 4}])
    assert [r["a"] for r in g.read_rows(path)] == [1, 2, 4]


def test_csv_writes_its_header_once(tmp_path):
    path = str(tmp_path / "r.csv")
    g.append_rows(path, [{"x": 1, "y": "a"}], fields=("x", "y"))
    g.append_rows(path, [{"x": 2, "y": "b"}], fields=("x", "y"))
    with open(path, newline="") as f:
        assert f.read() == "x,y\r\n1,a\r\n2,b\r\n"
    assert g.read_rows(path) == [{"x": "1", "y": "a"}, {"x": "2", "y": "b"}]


def test_append_refuses_a_format_mismatch(tmp_path):
    with pytest.raises(ValueError, match="CSV results need fields"):
        g.append_rows(str(tmp_path / "r.csv"), [{"x": 1}])
    with pytest.raises(ValueError, match="JSON lines"):
        g.append_rows(str(tmp_path / "r.jsonl"), [{"x": 1}], fields=("x",))


def test_done_seeds_and_missing(tmp_path):
    grid = _grid(tmp_path)
    g.append_rows(grid.path, [{"name": "a", "seed": 0}, {"name": "a", "seed": 2}])
    assert g.done_seeds(grid.rows(), grid.key) == {"a": {0, 2}}
    assert grid.missing("a", [0, 1, 2, 3]) == [1, 3] and grid.missing("b", [0]) == [0]


def test_seed_label():
    assert g.seed_label([2, 0, 1]) == "seeds0-2" and g.seed_label([0, 2, 5]) == "seeds0_2_5"


def test_cell_lock_is_held_by_a_live_process_and_taken_from_a_dead_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.makedirs(tmp_path / "locks")
        lock = tmp_path / "locks" / "c.lock"
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        with g.cell_lock(str(tmp_path), "c") as mine:
            assert not mine
        assert lock.exists()  # the owner's lock stays
    finally:
        sleeper.kill()
        sleeper.wait()
    with g.cell_lock(str(tmp_path), "c") as mine:  # its owner is gone: stale
        assert mine
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_run_grid_runs_resumes_and_skips(tmp_path):
    grid = _grid(tmp_path)
    calls = []

    def run(cell, todo, ckpt):
        calls.append((cell, todo))
        os.makedirs(ckpt, exist_ok=True)
        if cell == "b" and len(calls) == 2:
            return None  # interrupted: its checkpoint stays
        return g.Finished([{"name": cell, "seed": s} for s in todo], resumed_from=len(calls))

    first = g.run_grid(grid, ["a", "b", "c"], [0, 1], run)
    assert [(s.cell, s.status) for s in first] == [("a", "done"), ("b", "interrupted")]
    assert os.listdir(tmp_path / "ckpt") == ["b"]
    g.append_rows(grid.path, [{"name": "c", "seed": 0}])  # another process ran part of c
    seen = []
    second = g.run_grid(grid, ["a", "b", "c"], [0, 1], run, after=seen.append)
    assert [(s.cell, s.status, s.seeds) for s in second] == [
        ("a", "skipped", []), ("b", "done", [0, 1]), ("c", "done", [1]),
    ]  # fmt: skip
    assert seen == second and calls[2:] == [("b", [0, 1]), ("c", [1])]
    assert not os.listdir(tmp_path / "ckpt")  # removed once the rows are written
    assert sorted((r["name"], r["seed"]) for r in grid.rows()) == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("c", 1),
    ]  # fmt: skip


def test_a_busy_cell_is_left_to_its_owner_and_a_non_writer_writes_nothing(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.makedirs(tmp_path / "locks")
        me = {"host": os.uname().nodename, "pid": sleeper.pid}
        (tmp_path / "locks" / "a.lock").write_text(json.dumps(me))

        def run(cell, todo, ckpt):
            return g.Finished([{"name": cell, "seed": s} for s in todo])

        statuses = g.run_grid(_grid(tmp_path), ["a"], [0], run)
        assert [s.status for s in statuses] == ["busy"]
        quiet = _grid(tmp_path, write=False, locks=False)
        assert [s.status for s in g.run_grid(quiet, ["a"], [0], run)] == ["done"]
        assert quiet.rows() == []
    finally:
        sleeper.kill()
        sleeper.wait()


# A results.jsonl row as the MinAtar sweep wrote it before it ran on the shared grid.
OLD_MINATAR_ROW = {
    "game": "CartPole-v1", "arm": "gmp", "controller": "gmp", "pooling": "flatten",
    "sparsity": 0.9, "width": 1, "seed": 0, "env_steps": 1800, "total_env_steps": 1800,
    "updates": 400, "final_return": 21.5, "final_fraction": 0.1, "final_episodes": 9,
    "final_sparsity": 0.9003, "wall_seconds": 12.25, "cell_seeds": 2,
    "curve": {"env_steps": [400, 600], "mean_return": [None, 21.5], "episodes": [0, 9],
              "loss": [0.5, None], "sparsity": [0.0, 0.9003]},
}  # fmt: skip


def test_old_minatar_results_still_load(tmp_path):
    dense = {**OLD_MINATAR_ROW, "arm": "dense", "controller": "dense", "sparsity": 0.0,
             "final_sparsity": 0.0, "final_return": 20.0}  # fmt: skip
    with open(tmp_path / "results.jsonl", "w") as f:
        for row in (OLD_MINATAR_ROW, {**OLD_MINATAR_ROW, "seed": 1}, dense):
            f.write(json.dumps(row) + "\n")
    rows = ms.read_results(str(tmp_path))
    assert rows[0] == OLD_MINATAR_ROW and len(rows) == 3
    grid = ms.sweep_grid(str(tmp_path))
    assert grid.missing(ms.Cell("CartPole-v1", "gmp", 0.9, 1), [0, 1, 2]) == [2]
    assert grid.missing(ms.Cell("CartPole-v1", "dense", 0.0, 1), [0, 1]) == [1]
    text = ms.write_report(str(tmp_path), rows, ["CartPole-v1"])
    assert "| gmp | 1 | 0.9 | 2 | 21.50 ± 0.00 | 0.900 |" in text
    assert f"| gmp | 1 | 0.9 | 2 {ms.X} 1 | 1.075 |" in text
    for name in ("summary.json", "curves_CartPole-v1.png", "profile.png"):
        assert os.path.getsize(tmp_path / name) > 0, name


def test_old_classifier_sweep_csv_still_loads(tmp_path):
    # results.csv as experiments.sweep wrote it (csv.DictWriter, its FIELDS as the header)
    text = (
        "controller,sparsity,seed,test_accuracy,test_loss,final_sparsity,flip_flops,seconds\r\n"
        "gmp,0.8,0,0.5125,1.25,0.8000,3,41.5\r\n"
        "gmp,0.8,1,0.5375,1.2,0.8000,2,41.5\r\n"
    )
    (tmp_path / "results.csv").write_text(text)
    grid = classifier.sweep_grid(str(tmp_path))
    assert grid.missing(classifier.Cell("gmp", 0.8), [0, 1]) == []
    assert grid.missing(classifier.Cell("gmp", 0.9), [0, 1]) == [0, 1]
    md = classifier.write_report(str(tmp_path))
    assert "| gmp | 0.8 | 2 | 0.5250 ± " in md
    row = {"controller": "rigl", "sparsity": 0.8, "seed": 0, "test_accuracy": 0.5,
           "test_loss": 1.0, "final_sparsity": 0.8, "flip_flops": 0, "seconds": 1.0}  # fmt: skip
    g.append_rows(grid.path, [row], classifier.FIELDS)
    with open(tmp_path / "results.csv", newline="") as f:
        assert f.read() == text + "rigl,0.8,0,0.5,1.0,0.8,0,1.0\r\n"


def test_classifier_sweep_refuses_to_add_non_contiguous_seeds(tmp_path):
    from experiments.configs.default import get_config

    row = {"controller": "gmp", "sparsity": 0.8, "seed": 1, "test_accuracy": 0.5,
           "test_loss": 1.0, "final_sparsity": 0.8, "flip_flops": 0, "seconds": 1.0}  # fmt: skip
    g.append_rows(str(tmp_path / classifier.RESULTS), [row], classifier.FIELDS)
    with pytest.raises(ValueError, match=r"seeds \[0, 2\] to add are not contiguous"):
        classifier.run_sweep(get_config(), str(tmp_path), ["gmp"], [0.8], seeds=3)
    assert not os.listdir(tmp_path / "locks")  # the lock goes with the error
