"""Drives the classifier program (:mod:`emrakul.lab.loop`) over seeds: one controller's run.

A thin layer over :func:`emrakul.lab.driver.drive`: every chunk is the same compiled program,
the whole state and the metrics so far are checkpointed after each chunk under
``workdir/checkpoints/<controller>`` (steps count chunks), a run started again with the same
workdir resumes to exactly the metrics of an uninterrupted run, and the seeds can be split
over a mesh of all devices.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from emrakul.lab import driver
from emrakul.lab import sharding as shd
from emrakul.lab.checkpoint import Checkpointer
from emrakul.lab.driver import Carry, NonFiniteLossError
from emrakul.lab.loop import IntervalMetrics, make_train
from emrakul.lab.sharding import warn_native_on_mesh as _warn_native_on_mesh

__all__ = [
    "Carry",
    "NonFiniteLossError",
    "Result",
    "_warn_native_on_mesh",
    "rows",
    "run_controller",
]


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
      chunk: surgery intervals per compiled chunk: the largest divisor of the run's intervals
        that is at most ``chunk`` (every chunk is then the same compiled program).
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
        tests, not a promise of XLA's). ``None``: ``config.run.seed_loop`` (default ``"vmap"``).

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
    if mesh is not None:
        shd.check_divisible(seeds, mesh)
    trainer = make_train(config, controller)
    directory = None if workdir is None else os.path.join(workdir, "checkpoints", controller)
    run = driver.drive(
        trainer.program,
        range(seed_offset, seed_offset + seeds),
        chunk=chunk,
        chunk_floor=1,
        checkpoints=driver.Checkpoints(directory, step_unit="chunks", seed_loop_marker=True),
        progress=driver.bar if progress else None,
        label=controller,
        max_chunks=max_chunks,
        mesh=mesh,
        seed_loop=seed_loop,
        checkpointer=Checkpointer,  # looked up here, so that tests can substitute a spy
    )
    if run is None:
        return None
    return Result(
        controller=controller,
        layer_names=trainer.layer_names,
        metrics=run.metrics,
        test=run.final,
        seconds=run.seconds,
        resumed_from=run.resumed_from,
        compilations=run.compilations,
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
