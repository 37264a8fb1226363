"""Seeds sharded over devices (``emrakul.lab.sharding``, ``run_controller(shard=True)``).

The device count of the CPU backend is fixed when JAX initialises, so the 8-device checks run
in a child process (this file run as a script) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; the child writes a JSON report that the
tests below read.

With the default ``seed_loop="vmap"``, sharded and unsharded runs are *not* bit-identical in their
floating-point values, and the sharding code cannot make them so: XLA compiles a different
per-device program for each. Unsharded, one CPU device runs the 8-seed batch (e.g. the hidden layer
on the shared validation set is one ``[N, 40] x [40, 8 * 32]`` matmul, and the loss one vectorised
reduction over ``[8, B]``); sharded, each device runs the 1-seed program (``[N, 40] x [40, 32]``, a
reduction over ``[1, B]``). The CPU kernels block and vectorise differently for the two shapes, so
sums are associated in a different order and floats differ in the last bit. This is not specific to
sharding: an unsharded sweep of 1 or 2 seeds differs from one of 8 in the same way (measured on the
default config, 1000 steps: 8 seeds sharded over 8 devices reproduce seed 0 in a 1-seed vmapped
sweep bit-for-bit, 8 seeds over 4 devices reproduce a 2-seed unsharded sweep, and unsharded 4- and
8-seed sweeps agree with each other but not with those). Over 200 steps of this tiny config the
differences compound to ~1e-7 absolute (a few ulp); everything discrete - the masks / lifecycle,
sign-flip counters, dormancy ages, RNG keys, step counters, per-layer sparsity - and the test
accuracies come out exactly equal, and the float leaves are asserted within ``rtol=1e-5, atol=1e-6``
(observed: <= 1e-6 absolute, <= 5e-7 relative). In long runs a last-bit difference can flip a
near-tie mask decision, after which the trajectories diverge (statistically equivalent, not
identical; ``benchmarks/sharded_sweep.py`` shows both regimes).

``seed_loop="map"`` (:func:`emrakul.lab.sharding.over_seeds`) removes the batch-shape dependence:
every seed runs the same one-seed program (``lax.map`` unsharded; ``shard_map`` of it sharded),
so the sharded run, the unsharded run and a seed run alone agree in every leaf, bit for bit
(asserted below; observed on XLA:CPU, not a promise of XLA's).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = 8
CONTROLLER = "gsnr"  # keeps vital signs and sedates: masks, vitals and lifecycle all checked
TINY = [
    "--config.train.steps=200",
    f"--config.seeds={SEEDS}",
    "--config.host.width=(32,)",
    "--config.data.num_samples=600",
    "--config.prune.every=20",
    "--config.prune.sparsity=0.8",
    "--config.run.chunk=5",
    f"--config.compare={CONTROLLER}",
]
RTOL, ATOL = 1e-5, 1e-6
# the child process (one fixture, ~10 compiled programs) runs inside the first test that uses
# it, and shares the 2 cores with the other pytest-xdist worker: more than the default 300 s
# must be allowed
pytestmark = pytest.mark.timeout(900)
# the 8-device child costs ~140 s of CI's 20 minutes: its tests run with ``-m slow``; the
# single-device tests below (mesh, placement, seed loops, validation) run in CI
SLOW_CHILD = pytest.mark.slow


def forced_env(devices: int) -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "")
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def tiny_config():
    """The default config shrunk as ``TINY`` shrinks it on the command line."""
    from experiments.configs.default import get_config

    config = get_config()
    config.host.width = (32,)
    config.data.num_samples = 600
    config.train.steps = 200
    config.prune.every = 20
    config.prune.sparsity = 0.8
    config.run.chunk = 5
    return config


def run_forced(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root with 8 forced CPU devices; must succeed."""
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=forced_env(8),
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out


# ----------------------------------------------------------------------------------------------
# In-process tests (the pytest process has however many devices it has; usually one CPU).


def test_seed_mesh_and_placement_on_the_local_devices():
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from emrakul.lab import sharding as shd

    mesh = shd.seed_mesh()
    assert mesh.axis_names == ("seeds",) and mesh.size == len(jax.devices())
    n = mesh.size
    tree = {"w": jnp.ones((n, 3)), "scalar": jnp.float32(1.0), "other": jnp.ones((n + 1,))}
    placed = shd.shard_seeds(tree, mesh, num_seeds=n)
    assert placed["w"].sharding.spec == P("seeds")
    assert placed["scalar"].sharding.spec == P() and placed["other"].sharding.spec == P()
    np.testing.assert_array_equal(placed["w"], tree["w"])
    with pytest.raises(ValueError, match="different leading sizes"):
        shd.seed_shardings(tree, mesh)
    with pytest.raises(ValueError, match="twice"):
        shd.seed_mesh([jax.devices()[0]] * 2)


def test_initialize_distributed_validates_before_calling_jax():
    from emrakul.lab.sharding import initialize_distributed

    with pytest.raises(ValueError, match="host:port"):
        initialize_distributed("localhost", 2, 0)
    with pytest.raises(ValueError, match="host:port"):
        initialize_distributed("localhost:99999", 2, 0)
    with pytest.raises(ValueError, match="num_processes"):
        initialize_distributed("localhost:1234", 0, 0)
    with pytest.raises(ValueError, match="process_id"):
        initialize_distributed("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="process_id"):
        initialize_distributed("localhost:1234", 2, -1)


def test_over_seeds_loops_and_bad_loop():
    import jax
    import jax.numpy as jnp

    from emrakul.lab import sharding as shd

    def one(x, y):
        return {"z": jnp.tanh(x @ y) / 3.0, "s": jnp.sum(jnp.sin(x))}

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 2, 4)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(4, 4, 5)), jnp.float32)
    want = [jax.tree.map(lambda v: v[None], one(x[i], y[i])) for i in range(4)]
    want = jax.tree.map(lambda *v: jnp.concatenate(v), *want)
    mesh = shd.seed_mesh(jax.local_devices()[:1])
    for loop, m in [("vmap", None), ("map", None), ("map", mesh)]:
        lifted = shd.over_seeds(one, loop, m)
        got = jax.jit(lifted)(x, y)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
        text = str(jax.make_jaxpr(lifted)(x, y))
        assert ("scan" in text) == (loop == "map"), (loop, m)  # map loops, vmap batches
        assert ("shard_map" in text) == (m is not None), (loop, m)
    with pytest.raises(ValueError, match="seed loop must be one of"):
        shd.over_seeds(one, "pmap")


# ----------------------------------------------------------------------------------------------
# 8 forced CPU devices, in a child process.


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # the first test using this fixture pays for the child (~1-3 min); see pytestmark
    work = tmp_path_factory.mktemp("sharded")
    run_forced([os.path.abspath(__file__), str(work)], timeout=900)
    with open(work / "report.json") as f:
        return json.load(f)


@SLOW_CHILD
def test_child_sees_eight_devices(report):
    assert report["devices"] == 8


@SLOW_CHILD
def test_sharded_run_equals_unsharded(report):
    eq = report["equal"]
    np.testing.assert_array_equal(eq["test_accuracy"]["sharded"], eq["test_accuracy"]["unsharded"])
    # every integer leaf (masks / lifecycle, vitals counters and ages, keys, steps) bit-equal
    assert eq["int_leaves"] > 20 and eq["int_leaves_different"] == [], eq["int_leaves_different"]
    assert eq["masks_equal"] and eq["vitals_int_equal"]
    # float leaves: a few ulp apart (see the module docstring), well within the tolerance
    assert eq["float_leaves_outside_tolerance"] == [], eq["float_leaves_outside_tolerance"]
    assert eq["max_abs_diff"]["params"] < ATOL
    # discrete metrics (sparsity per layer, cut/grown fractions, accuracies) exactly equal
    discrete = {
        "changes",
        "cut",
        "grown",
        "layer_sparsity",
        "reversals",
        "sparsity",
        "step",
        "val_accuracy",
    }
    assert discrete <= set(eq["metrics_exact"]), eq["metrics_exact"]
    assert report["compilations"] == {"sharded": 1, "unsharded": 1}


@SLOW_CHILD
def test_map_seed_loop_is_bit_identical_sharded_unsharded_and_alone(report):
    """``seed_loop="map"``: every seed runs the same one-seed program wherever it is placed."""
    m = report["map"]
    assert m["leaves"] > 50
    assert m["different_leaves"] == [], m["different_leaves"]  # floats included, bit for bit
    assert m["alone_different_leaves"] == [], m["alone_different_leaves"]
    acc = m["test_accuracy"]
    assert acc["sharded"] == acc["unsharded"] and acc["alone"] == acc["unsharded"][5:6]
    assert m["compilations"] == {"sharded": 1, "unsharded": 1}
    place = m["placement"]
    assert place["specs"] == ["('seeds',)"] and place["device_set_sizes"] == [8]
    assert place["shard_leading"] == [1]


@SLOW_CHILD
def test_state_is_sharded_over_eight_devices(report):
    placed = report["placement"]
    # the state run_controller checkpoints after its last chunk: every leaf split over 8 devices
    for group in ["params", "masks", "vitals", "opt_state", "metrics"]:
        info = placed["runner"][group]
        assert info["leaves"] > 0, group
        assert info["specs"] == ["('seeds',)"], (group, info)
        assert info["device_set_sizes"] == [8] and info["addressable_shards"] == [8], group
        assert info["shard_leading"] == [1], group  # one seed per device
    # jit without shardings: GSPMD propagates the input's seeds sharding to every output leaf,
    # so masks and vital signs follow the params with no annotation
    for group in ["params", "masks", "vitals", "opt_state"]:
        info = placed["propagated"][group]
        assert info["specs"] == ["('seeds',)"], (group, info)
        assert info["device_set_sizes"] == [8], group
    assert placed["unsharded_device_set_sizes"] == [1]


@SLOW_CHILD
def test_seeds_must_divide_over_the_devices(report):
    errors = report["divisibility"]
    for where in ["shard_seeds", "run_controller"]:
        assert "cannot shard 6 seeds over 8 devices" in errors[where], errors[where]
        assert "multiple of the device count" in errors[where]
    assert errors["run_controller_seconds"] < 5  # raised before anything compiles


@SLOW_CHILD
def test_unsharded_checkpoint_resumes_sharded(report):
    resumed = report["resume"]
    assert resumed["resumed_from"] == 2
    assert resumed["same_test_accuracy"]
    assert resumed["quarantined"] == []


@SLOW_CHILD
def test_sharded_checkpoint_resumes_on_one_device(report, tmp_path):
    """The 8-device run's checkpoints restore in this process (one device), unsharded."""
    import shutil

    from emrakul.lab.runner import run_controller

    work = str(tmp_path / "copy")
    shutil.copytree(os.path.join(report["workdir"], "sharded"), work)
    config = tiny_config()
    # the run is finished: this restores the last chunk's checkpoint and evaluates it
    r = run_controller(config, CONTROLLER, seeds=SEEDS, workdir=work, progress=False)
    assert r.resumed_from == 2
    assert not [
        c for c in os.listdir(os.path.join(work, "checkpoints", CONTROLLER)) if "damaged" in c
    ]
    np.testing.assert_array_equal(r.test["accuracy"], report["equal"]["test_accuracy"]["sharded"])


@SLOW_CHILD
def test_train_main_job_shards_end_to_end(report, tmp_path):
    work = str(tmp_path / "run")
    out = run_forced(["-m", "experiments.train", f"--workdir={work}", "--shard", *TINY], 600)
    assert f"| {CONTROLLER} | {SEEDS} |" in out.stdout
    with open(os.path.join(work, "summary.json")) as f:
        summary = json.load(f)[CONTROLLER]
    assert summary["seed_list"] == list(range(SEEDS))
    assert summary["final_sparsity_mean"] == pytest.approx(0.8, abs=1e-3)
    # the same run as the child's unsharded run_controller: identical test accuracies
    np.testing.assert_array_equal(
        np.float32(summary["test_accuracy"]), report["equal"]["test_accuracy"]["unsharded"]
    )


def test_train_rejects_shard_for_the_rl_branch(tmp_path):
    args = ["--config=experiments/configs/cartpole_dqn.py", "--shard"]
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=forced_env(1),
    )
    assert out.returncode != 0 and "--shard applies to the classifier job" in out.stderr


@pytest.mark.slow
@SLOW_CHILD
def test_two_processes_share_one_mesh(report, tmp_path):
    """Multi-host start: 2 processes x 4 CPU devices (gloo) join one 8-device mesh."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    work = str(tmp_path / "mp")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.train",
                f"--workdir={work}",
                "--shard",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *TINY,
            ],
            cwd=ROOT,
            env=forced_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    with open(os.path.join(work, "summary.json")) as f:
        summary = json.load(f)[CONTROLLER]
    np.testing.assert_array_equal(
        np.float32(summary["test_accuracy"]), report["equal"]["test_accuracy"]["unsharded"]
    )


# ----------------------------------------------------------------------------------------------
# The child process: ``python tests/test_sharding.py WORKDIR`` with 8 forced CPU devices.


def _child(work: str) -> None:
    import time

    import jax
    import jax.numpy as jnp

    from emrakul._tree import path_str
    from emrakul.lab import runner
    from emrakul.lab import sharding as shd
    from emrakul.lab.checkpoint import Checkpointer
    from emrakul.lab.loop import make_train

    config = tiny_config()
    saved = {}  # the live carry run_controller checkpoints after each chunk, by directory

    class Spy(Checkpointer):
        def save(self, step, state):
            saved[self.directory] = state
            super().save(step, state)

    runner.Checkpointer = Spy
    out: dict = {"devices": len(jax.devices())}

    def run(name, shard):
        wd = os.path.join(work, name)
        r = runner.run_controller(
            config, CONTROLLER, seeds=SEEDS, workdir=wd, progress=False, shard=shard
        )
        return r, saved[os.path.abspath(os.path.join(wd, "checkpoints", CONTROLLER))]

    a, carry_a = run("sharded", True)
    b, carry_b = run("unsharded", False)
    out["compilations"] = {"sharded": a.compilations, "unsharded": b.compilations}

    # -- equality of everything the run carries
    flat_a = jax.tree_util.tree_flatten_with_path(carry_a)[0]
    flat_b = jax.tree.leaves(carry_b)
    ints, int_diff, float_bad, max_abs = 0, [], [], {}
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        name, x, y = path_str(path), np.asarray(x), np.asarray(y)
        if x.dtype.kind == "f":
            if not np.allclose(x, y, rtol=RTOL, atol=ATOL):
                float_bad.append(name)
            group = name.split("/")[1]
            diff = float(np.max(np.abs(x - y), initial=0.0))
            max_abs[group] = max(max_abs.get(group, 0.0), diff)
        else:
            ints += 1
            if not np.array_equal(x, y):
                int_diff.append(name)

    def all_equal(ta, tb):
        return all(
            np.array_equal(x, y)
            for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb), strict=True)
        )

    life_a, life_b = carry_a.state.opt_state.life, carry_b.state.opt_state.life
    vit_a, vit_b = carry_a.state.opt_state.vitals, carry_b.state.opt_state.vitals
    ints_of = lambda t: [x for x in jax.tree.leaves(t) if np.asarray(x).dtype.kind != "f"]
    out["equal"] = {
        "test_accuracy": {
            "sharded": a.test["accuracy"].tolist(),
            "unsharded": b.test["accuracy"].tolist(),
        },
        "int_leaves": ints,
        "int_leaves_different": int_diff,
        "float_leaves_outside_tolerance": float_bad,
        "max_abs_diff": max_abs,
        "masks_equal": all_equal(life_a, life_b),
        "vitals_int_equal": all_equal(ints_of(vit_a), ints_of(vit_b)),
        "metrics_exact": sorted(
            f
            for f in a.metrics._fields
            if np.array_equal(getattr(a.metrics, f), getattr(b.metrics, f))
        ),
    }

    # -- placement of the state: the runner's final carry, and propagation without shardings
    def describe(tree):
        leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
        return {
            "leaves": len(leaves),
            "specs": sorted({str(tuple(getattr(x.sharding, "spec", ()))) for x in leaves}),
            "device_set_sizes": sorted({len(x.sharding.device_set) for x in leaves}),
            "addressable_shards": sorted({len(x.addressable_shards) for x in leaves}),
            "shard_leading": sorted(
                {s.data.shape[0] for x in leaves for s in x.addressable_shards}
            ),
        }

    def groups(carry_state):
        return {
            "params": carry_state.params,
            "masks": carry_state.opt_state.life,
            "vitals": carry_state.opt_state.vitals,
            "opt_state": carry_state.opt_state,
        }

    placement = {"runner": {k: describe(v) for k, v in groups(carry_a.state).items()}}
    placement["runner"]["metrics"] = describe(carry_a.metrics)
    placement["unsharded_device_set_sizes"] = describe(carry_b)["device_set_sizes"]
    short = config.copy_and_resolve_references()
    short.train.steps = 40  # 2 intervals: the same per-step program, compiled cheaper
    trainer = make_train(short, CONTROLLER)
    mesh = shd.seed_mesh()
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(SEEDS))
    state = shd.shard_seeds(jax.jit(jax.vmap(trainer.init))(keys), mesh)
    plain = jax.jit(jax.vmap(trainer.run, in_axes=(0, None)), static_argnums=1)  # no shardings
    state, _ = plain(state, 1)
    placement["propagated"] = {k: describe(v) for k, v in groups(state).items()}
    out["placement"] = placement

    # -- divisibility
    errors = {}
    try:
        shd.shard_seeds(jnp.zeros((6, 3)), mesh)
    except ValueError as e:
        errors["shard_seeds"] = str(e)
    t0 = time.time()
    try:
        runner.run_controller(config, CONTROLLER, seeds=6, shard=True, progress=False)
    except ValueError as e:
        errors["run_controller"] = str(e)
    errors["run_controller_seconds"] = time.time() - t0
    out["divisibility"] = errors

    # -- the unsharded run's checkpoints restored onto the mesh (the run is finished: this
    # restores the last chunk's checkpoint, then evaluates it sharded); on a copy, so that the
    # in-process test can resume the sharded run's own checkpoints
    import shutil

    src = os.path.join(work, "resume")
    shutil.copytree(os.path.join(work, "unsharded"), src)
    r = runner.run_controller(
        config, CONTROLLER, seeds=SEEDS, workdir=src, progress=False, shard=True
    )
    out["resume"] = {
        "resumed_from": r.resumed_from,
        "same_test_accuracy": bool(np.array_equal(r.test["accuracy"], b.test["accuracy"])),
        "quarantined": [
            c for c in os.listdir(os.path.join(src, "checkpoints", CONTROLLER)) if "damaged" in c
        ],
    }

    # -- seed_loop="map": each device maps the one-seed program over its seeds (shard_map), the
    # unsharded run maps it over all 8: every leaf bit-identical, and equal to a seed run alone
    def run_map(name, shard, seeds=SEEDS, offset=0):
        wd = os.path.join(work, name)
        kw = dict(seeds=seeds, seed_offset=offset, workdir=wd, progress=False, shard=shard)
        r = runner.run_controller(config, CONTROLLER, seed_loop="map", **kw)
        return r, saved[os.path.abspath(os.path.join(wd, "checkpoints", CONTROLLER))]

    (ma, mcarry_a), (mb, mcarry_b) = run_map("map_sharded", True), run_map("map_unsharded", False)
    alone, carry_alone = run_map("map_alone", False, seeds=1, offset=5)
    flat_a = jax.tree_util.tree_flatten_with_path(mcarry_a)[0]
    one = lambda x: np.asarray(x)[5:6]  # seed 5 of the 8-seed run
    out["map"] = {
        "leaves": len(flat_a),
        "different_leaves": [
            path_str(p)
            for (p, x), y in zip(flat_a, jax.tree.leaves(mcarry_b), strict=True)
            if not np.array_equal(np.asarray(x), np.asarray(y))
        ],
        "alone_different_leaves": [
            path_str(p)
            for (p, x), y in zip(flat_a, jax.tree.leaves(carry_alone), strict=True)
            if not np.array_equal(one(x), np.asarray(y))
        ],
        "test_accuracy": {
            "sharded": ma.test["accuracy"].tolist(),
            "unsharded": mb.test["accuracy"].tolist(),
            "alone": alone.test["accuracy"].tolist(),
        },
        "compilations": {"sharded": ma.compilations, "unsharded": mb.compilations},
        "placement": describe(mcarry_a.state),
    }
    out["workdir"] = work
    with open(os.path.join(work, "report.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    _child(sys.argv[1])
