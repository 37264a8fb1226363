"""Smoke tests of the absl entry points (tiny configs, real subprocesses)."""

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.train.steps=200",
    "--config.seeds=2",
    "--config.host.width=(32,)",
    "--config.data.num_samples=600",
    "--config.prune.every=20",
    "--config.prune.sparsity=0.8",
    "--config.run.chunk=5",
]


def read_lines(path):
    with open(path) as f:
        return f.read().strip().splitlines()


def run(module, *args, env=None):
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_train_main_job_writes_everything(tmp_path):
    work = str(tmp_path / "run")
    out = run("experiments.train", f"--workdir={work}", "--config.compare=dense,gmp", *TINY)
    assert "| gmp | 2 |" in out.stdout
    for name in ["metrics.jsonl", "summary.json", "summary.md", "config.json",
                 "accuracy_loss.png", "layer_sparsity.png", "mask_churn.png"]:  # fmt: skip
        assert os.path.getsize(os.path.join(work, name)) > 0, name
    with open(os.path.join(work, "summary.json")) as f:
        summary = json.load(f)
    assert summary["gmp"]["final_sparsity_mean"] == pytest.approx(0.8, abs=1e-3)
    assert summary["dense"]["final_sparsity_mean"] == 0.0
    assert summary["gmp"]["seed_list"] == [0, 1] and len(summary["gmp"]["test_accuracy"]) == 2
    with open(os.path.join(work, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 * 2 * 10  # controllers x seeds x intervals


def test_train_rejects_bad_config_before_compiling(tmp_path):
    args = ["-m", "experiments.train", f"--workdir={tmp_path}", "--config.prune.sparsity=1.5"]
    out = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert "config.prune.sparsity" in out.stderr


@pytest.mark.slow  # 30 s; the grid's skipping is tested in tests/test_grid.py
def test_sweep_skips_finished_cells(tmp_path):
    work = str(tmp_path / "sweep")
    args = [f"--workdir={work}", "--controllers=gmp", "--sparsities=0.8", "--seeds=2", *TINY]
    run("experiments.sweep", *args)
    lines = read_lines(os.path.join(work, "results.csv"))
    assert len(lines) == 1 + 2
    again = run("experiments.sweep", *args)
    assert "skip gmp @ 0.8" in again.stdout
    assert read_lines(os.path.join(work, "results.csv")) == lines
    assert os.path.exists(os.path.join(work, "accuracy_vs_sparsity.png"))


@pytest.mark.slow  # 74 s; sharding end to end is also tested in tests/test_sharding.py
def test_sweep_shards_seeds_over_devices(tmp_path):
    """``--shard`` over 2 forced CPU devices: each device runs the 1-seed program, so seed 0
    equals an unsharded 1-seed sweep bit for bit (see tests/test_sharding.py for why 1 vs 2
    seeds in one program may differ in the last bits)."""
    flags = os.environ.get("XLA_FLAGS", "")  # the same compiler flags as the unsharded run
    two = {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=2".strip()}
    common = ["--controllers=gmp", "--sparsities=0.8", *TINY]
    sharded = str(tmp_path / "sharded")
    out = run("experiments.sweep", f"--workdir={sharded}", "--seeds=2", "--shard", *common, env=two)
    assert "| gmp | 0.8 | 2 |" in out.stdout
    alone = str(tmp_path / "alone")
    run("experiments.sweep", f"--workdir={alone}", "--seeds=1", *common)

    def rows(work):
        with open(os.path.join(work, "results.csv")) as f:
            return list(csv.DictReader(f))

    got, want = rows(sharded), rows(alone)
    assert [r["seed"] for r in got] == ["0", "1"]
    assert got[0]["test_accuracy"] == want[0]["test_accuracy"]
    assert got[0]["final_sparsity"] == want[0]["final_sparsity"]
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--workdir={tmp_path / 'bad'}", "--seeds=3",
         "--shard", *common],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **two},
    )  # fmt: skip
    assert bad.returncode != 0 and "cannot shard 3 seeds over 2 devices" in bad.stderr


@pytest.mark.slow  # CI time; the DQN host is covered by tests/test_dqn.py
def test_train_runs_a_pruned_cartpole_dqn(tmp_path):
    work = str(tmp_path / "rl")
    out = run(
        "experiments.train",
        f"--workdir={work}",
        "--config=experiments/configs/cartpole_dqn.py",
        "--config.rl.total_env_steps=8000",
        "--config.rl.prune_every=100",
        "--config.seeds=2",
    )
    assert "| gmp |" in out.stdout and "| dense |" in out.stdout
    rows = [json.loads(line) for line in read_lines(os.path.join(work, "rl_metrics.jsonl"))]
    gmp = [r for r in rows if r["controller"] == "gmp"]
    last = max(r["interval"] for r in gmp)
    assert {round(r["sparsity"], 3) for r in gmp if r["interval"] == last} == {0.9}
    assert os.path.getsize(os.path.join(work, "returns.png")) > 0


def test_compare_pairs_seeds(tmp_path):
    from experiments import compare

    for name, accs in [("a", [0.5, 0.6, 0.7]), ("b", [0.55, 0.62, 0.74])]:
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "summary.json", "w") as f:
            json.dump({"c": {"seed_list": [3, 4, 5], "test_accuracy": accs}}, f)
    table = compare.compare(f"{tmp_path / 'a'}:c", [f"{tmp_path / 'b'}:c"])
    assert "+0.0367 ± " in table  # mean of 0.05, 0.02, 0.04
    pooled = compare.compare(f"{tmp_path / 'a'}:c", [f"{tmp_path / 'b'}:c"] * 2, pool=True)
    assert "| pooled (2 runs per seed) | 3 |" in pooled and pooled.count("+0.0367") == 3
    with pytest.raises(ValueError, match="no controller"):
        compare.per_seed(f"{tmp_path / 'a'}:zzz")


@pytest.mark.slow  # ~110 s on 2 busy CPU cores (compilation): run with -m slow
@pytest.mark.timeout(900)
def test_train_agent_writes_a_policy_and_resumes(tmp_path):
    """Meta-training by ES writes a deployable policy file; a second identical run resumes from
    the finished search and reruns no generation."""
    work = str(tmp_path / "agent")
    args = [
        f"--workdir={work}", "--population=2", "--seeds=1", "--generations=2", "--groups=16,16",
        "--config.train.steps=40", "--config.prune.every=10", "--config.data.num_samples=600",
        "--config.train.batch_size=16",
    ]  # fmt: skip
    out = run("experiments.train_agent", *args)
    assert "  0 fitness" in out.stdout and "  1 fitness" in out.stdout
    policy = os.path.join(work, "policy.msgpack")
    log = os.path.join(work, "es_log.jsonl")
    assert os.path.getsize(policy) > 0
    first = [json.loads(line) for line in read_lines(log)]
    assert [r["generation"] for r in first] == [0, 1]
    again = run("experiments.train_agent", *args)
    assert " fitness " not in again.stdout and "wrote" in again.stdout
    assert [json.loads(line) for line in read_lines(log)] == first

    from emrakul import controllers as ctl

    assert ctl.make("magistrate", policy=policy).name == "magistrate"
