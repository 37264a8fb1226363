"""Drives the compiled loop from Python in chunks: progress, checkpoints, resumption, NaN stop.

Every chunk is the same compiled program (``run`` lifted over the seeds by
:func:`emrakul.lab.sharding.over_seeds`, jitted, with a fixed number of
intervals), so nothing recompiles between chunks. After each chunk the whole state and the
metrics recorded so far are checkpointed; a run started again with the same workdir resumes from
the newest checkpoint that loads and ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emrakul.lab import sharding as shd
from emrakul.lab.checkpoint import Checkpointer
from emrakul.lab.loop import IntervalMetrics, RunState, make_train
from emrakul.masks import native


class Carry(NamedTuple):
    """What a checkpoint holds: the run state (leading seeds axis) and the metrics so far."""

    state: RunState
    metrics: IntervalMetrics  # leaves [seeds, num_intervals, ...]


class Result(NamedTuple):
    """One controller's run over all seeds."""

    controller: str
    layer_names: tuple[str, ...]
    metrics: IntervalMetrics  # numpy, [seeds, num_intervals, ...]
    test: dict[str, np.ndarray]  # [seeds]
    seconds: float
    resumed_from: int  # chunks restored from a checkpoint (0 = fresh)
    compilations: int  # programs compiled for the chunks (1: nothing recompiled between chunks)
    seed_offset: int = 0  # the first seed


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the last good checkpoint is kept."""


def _progress(prefix: str, done: int, total: int, start: float) -> None:
    width = 30
    frac = done / max(total, 1)
    elapsed = time.time() - start
    eta = elapsed / frac - elapsed if frac > 0 else float("nan")
    bar = "#" * int(width * frac) + "." * (width - int(width * frac))
    sys.stderr.write(f"\r{prefix} [{bar}] {done}/{total} intervals, ETA {eta:5.0f}s ")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _seed_loop_marker(workdir: str, controller: str, seed_loop: str, resuming: bool) -> None:
    """Records the seed loop beside a fresh run's checkpoints (``<controller>.seed_loop``), or
    refuses to resume checkpoints written with another one (no marker: ``"vmap"``, the loop of
    checkpoints from before the marker existed)."""
    marker = os.path.join(workdir, "checkpoints", f"{controller}.seed_loop")
    if not resuming:
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            with open(marker, "w") as f:
                f.write(seed_loop)
        return
    before = "vmap"
    if os.path.exists(marker):
        with open(marker) as f:
            before = f.read().strip()
    if before != seed_loop:
        raise ValueError(
            f"the checkpoints in {workdir} were written with seed_loop={before!r}; "
            f"resuming them with seed_loop={seed_loop!r} would mix two programs whose "
            f"floats differ. Use config.run.seed_loop={before!r} or a new workdir."
        )


def _warn_native_on_mesh(mesh, seed_loop: str) -> None:
    """The native top-k custom call has no sharding rule: in a ``vmap`` over seeds split on a
    mesh, XLA gathers its inputs onto every device (results stay exact)."""
    if mesh is not None and seed_loop == "vmap" and native.enabled():
        warnings.warn(
            "the native top-k kernel (run.native_topk / emrakul.masks.native) has no sharding "
            "rule: with seed_loop='vmap' on a mesh every device gathers and computes all seeds' "
            "selections (exact, but slower and not local); use run.seed_loop='map' "
            "(shard_map keeps each device's seeds local) or leave the kernel off",
            stacklevel=3,
        )


def run_controller(
    config: ml_collections.ConfigDict,
    controller: str,
    *,
    seeds: int,
    seed_offset: int = 0,
    workdir: str | None = None,
    chunk: int = 5,
    progress: bool = True,
    max_chunks: int | None = None,
    shard: bool = False,
    seed_loop: str | None = None,
) -> Result | None:
    """Trains ``seeds`` seeds of one controller (vmapped or mapped) in checkpointed chunks.

    Args:
      config: the experiment config.
      controller: the controller name.
      seeds: number of seeds (one program; see ``seed_loop``).
      seed_offset: the first seed (seeds are ``seed_offset, ..., seed_offset + seeds - 1``).
      workdir: where checkpoints go (``workdir/checkpoints/<controller>``); ``None``: none.
      chunk: surgery intervals per compiled chunk.
      progress: print a progress bar to stderr.
      max_chunks: stop after this many chunks of this call (to simulate an interruption in
        tests); returns ``None`` if the run is not finished.
      shard: split the seeds over a 1-D mesh of all devices (:mod:`emrakul.lab.sharding`). Each
        device computes its seeds as an unsharded run of ``seeds / devices`` seeds would: XLA
        picks kernels by batch shape, so floats can differ from the all-seeds-on-one-device
        run in the last bits (as between sweeps of different sizes), and in long runs a
        near-tie mask decision can then go the other way (unless ``seed_loop="map"``).
      seed_loop: how the seeds share a program (:func:`emrakul.lab.sharding.over_seeds`):
        ``"vmap"`` (batched) or ``"map"`` (one after the other: every seed's results equal that
        seed run alone, in any sweep size, sharded or not; bit-identical on XLA:CPU in the
        tests, not a promise of XLA's). ``None``:
        ``config.run.seed_loop`` (default ``"vmap"``).

    Returns:
      A :class:`Result`, or ``None`` when stopped early by ``max_chunks``.

    Raises:
      NonFiniteLossError: the training loss became NaN or inf (the last good checkpoint is kept).
      ValueError: ``shard`` and ``seeds`` is not a multiple of the device count, an unknown
        ``seed_loop``, or checkpoints in ``workdir`` written with another ``seed_loop``.
    """
    if seed_loop is None:
        seed_loop = config.get("run", {}).get("seed_loop", "vmap")
    if seed_loop not in shd.SEED_LOOPS:
        raise ValueError(f"seed_loop must be one of {shd.SEED_LOOPS}, got {seed_loop!r}")
    mesh = shd.seed_mesh() if shard else None
    _warn_native_on_mesh(mesh, seed_loop)
    if mesh is not None:
        shd.check_divisible(seeds, mesh)
    trainer = make_train(config, controller)
    n = trainer.num_intervals
    # The largest chunk <= the requested one that divides the run: every chunk is then the same
    # compiled program (a shorter last chunk would compile a second one).
    chunk = max(d for d in range(1, max(1, min(chunk, n)) + 1) if n % d == 0)
    num_chunks = n // chunk
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(seed_offset, seed_offset + seeds))

    def lift(fn):
        return shd.over_seeds(fn, seed_loop, mesh)

    def run_seeds(state, size):
        return lift(lambda s: trainer.run(s, size))(state)

    init_seeds = lift(trainer.init)
    test = jax.jit(lift(lambda s: trainer.evaluate(s, "test")))

    def empty_metrics(state):
        one = jax.eval_shape(lambda s: trainer.run(s, 1)[1], jax.tree.map(lambda x: x[0], state))
        return jax.tree.map(lambda x: jnp.zeros((seeds, n, *x.shape[1:]), x.dtype), one)

    abstract = jax.eval_shape(lambda k: Carry(init_seeds(k), empty_metrics(init_seeds(k))), keys)
    init_sh, run_sh = {}, {}
    if mesh is not None:  # every leaf has a leading seeds axis: split it over the devices
        state_sh, metrics_sh = (shd.seed_shardings(x, mesh, seeds) for x in abstract)
        keys = shd.shard_seeds(keys, mesh, seeds)
        init_sh = {"out_shardings": state_sh}
        run_sh = {"in_shardings": (state_sh,), "out_shardings": (state_sh, metrics_sh)}
        abstract = shd.abstract_sharded(abstract, mesh, seeds)
    else:  # restore onto the default device, whichever devices saved the checkpoint
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
        )
    init = jax.jit(init_seeds, **init_sh)
    run = jax.jit(run_seeds, static_argnums=1, **run_sh)
    ckpt = None
    resumed, done = 0, 0
    carry = None
    if workdir is not None:
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints", controller))
        restored = ckpt.restore_latest(abstract)
        _seed_loop_marker(workdir, controller, seed_loop, resuming=restored is not None)
        if restored is not None:
            done, carry = restored
            resumed = done
    if carry is None:
        state = init(keys)
        carry = Carry(state, empty_metrics(state))
    if mesh is not None:
        carry = shd.shard_seeds(carry, mesh, seeds)
    start = time.time()
    chunks_this_call = 0
    while done < num_chunks:
        if max_chunks is not None and chunks_this_call >= max_chunks:
            return None
        lo = done * chunk
        size = min(chunk, n - lo)
        state, metrics = run(carry.state, size)
        losses = shd.to_host(metrics.train_loss)
        if not np.isfinite(losses).all():
            bad = sorted({int(s) + seed_offset for s in np.nonzero(~np.isfinite(losses))[0]})
            kept = f"chunk {done}" if ckpt is not None and done > 0 else "none"
            raise NonFiniteLossError(
                f"non-finite training loss for controller '{controller}' in intervals "
                f"{lo}-{lo + size - 1} (seeds {bad}); stopped. Last good checkpoint: {kept}. "
                "Lower train.lr or check the data."
            )
        table = jax.tree.map(
            lambda full, new, lo=lo: jax.lax.dynamic_update_slice_in_dim(full, new, lo, axis=1),
            carry.metrics,
            metrics,
        )
        carry = Carry(state, table)
        done += 1
        chunks_this_call += 1
        if ckpt is not None:
            ckpt.save(done, carry)
        if progress:
            _progress(f"{controller:>10}", min(done * chunk, n), n, start)
    final_test = shd.to_host(test(carry.state))
    return Result(
        controller=controller,
        layer_names=trainer.layer_names,
        metrics=shd.to_host(carry.metrics),
        test=final_test,
        seconds=time.time() - start,
        resumed_from=resumed,
        compilations=run._cache_size(),
        seed_offset=seed_offset,
    )


def rows(result: Result) -> list[dict[str, Any]]:
    """Flattens a result into JSON-serialisable rows, one per (seed, interval)."""
    m = result.metrics
    out = []
    seeds, n = m.step.shape[:2]
    for s in range(seeds):
        for i in range(n):
            row = {"controller": result.controller, "seed": s + result.seed_offset, "interval": i}
            for field in IntervalMetrics._fields:
                value = getattr(m, field)[s, i]
                row[field] = value.tolist() if np.ndim(value) else value.item()
            out.append(row)
    return out
