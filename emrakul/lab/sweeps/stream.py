"""Arms on a non-stationary stream: build the stream program from a config, run one arm over
seeds in checkpointed chunks, flatten its rows.

An arm is a controller name (``dense``, ``continual_backprop``, ``gmp``, ``magistrate``, ...)
with its keyword arguments from ``config.controllers``; every arm trains through
:func:`emrakul.wrap` around Adam (:func:`emrakul.lab.build.wrapped_adam`) on the same stream
per seed. The config is documented in ``experiments/configs/stream.py``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from emrakul import controllers as ctl
from emrakul.lab import driver, hosts
from emrakul.lab import stream_loop as sl
from emrakul.lab.build import classifier_data, config_adam, make_controller, monitor_split
from emrakul.lab.config import structure_from_config, validate
from emrakul.lab.hosts import streams


class ArmResult(NamedTuple):
    """One arm over all seeds: metrics ``[seeds, tasks]`` (numpy), the seeds, seconds."""

    arm: str
    metrics: sl.TaskMetrics
    seeds: tuple[int, ...]
    seconds: float
    resumed_from: int


def arm_names(compare: str | list[str] | tuple[str, ...]) -> list[str]:
    """The arms of ``config.compare`` (a comma-separated string or a list of names).

    Raises:
      ValueError: no arm named.
    """
    if isinstance(compare, str):
        compare = compare.split(",")
    arms = [str(a).strip() for a in compare if str(a).strip()]
    if not arms:
        raise ValueError("config.compare must name at least one arm")
    return arms


def stream_of(config: ml_collections.ConfigDict) -> streams.Stream:
    """The config's :class:`~emrakul.lab.hosts.streams.Stream` (checked, naming the field)."""
    s = config.stream
    return streams.check_stream(
        streams.Stream(s.kind, int(s.num_tasks), int(s.task_steps), float(s.shift), float(s.gain))
    )


def check_config(config: ml_collections.ConfigDict, arms: list[str]) -> streams.Stream:
    """Validates ``config`` for ``arms`` before anything compiles; returns the stream."""
    stream = stream_of(config)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.steps = stream.num_tasks * stream.task_steps
    validate(config, arms)
    every = int(config.prune.every)
    if stream.task_steps % every:
        raise ValueError(
            f"config.stream.task_steps={stream.task_steps} must be a multiple of "
            f"config.prune.every={every} (a task is a whole number of surgery intervals)"
        )
    return stream


def make_setup(config: ml_collections.ConfigDict, arm: str | ctl.Controller) -> sl.StreamSetup:
    """The stream program's static parts for one arm (a controller name, or a controller such
    as a Magistrate with parameters being meta-trained)."""
    stream = check_config(config, [] if isinstance(arm, ctl.Controller) else [arm])
    data = classifier_data(config)
    module = hosts.make_host(config.host.kind, tuple(config.host.width))
    controller = make_controller(arm, config.get("controllers", {}))
    every = int(config.prune.every)
    total = stream.num_tasks * stream.task_steps
    tx = config_adam(config, controller, total, structure_from_config(config.prune.structure))
    monitor = monitor_split(config, data) or data.val
    wants = controller.needs_activations
    return sl.StreamSetup(module, data, stream, tx, int(config.train.batch_size), every, wants,
                          monitor)  # fmt: skip


def run_arm(
    config: ml_collections.ConfigDict,
    arm: str,
    *,
    workdir: str | None,
    progress: bool = True,
    max_chunks: int | None = None,
) -> ArmResult | None:
    """Runs ``config.seeds`` seeds of ``arm`` on the stream, checkpointed per chunk of tasks
    under ``workdir/checkpoints/<arm>`` (resumed when present); ``None`` when stopped by
    ``max_chunks``."""
    program = sl.make_program(make_setup(config, arm))
    seeds = tuple(range(int(config.seed_offset), int(config.seed_offset) + int(config.seeds)))
    directory = None if workdir is None else os.path.join(workdir, "checkpoints", arm)
    run = driver.drive(
        program,
        seeds,
        chunk=int(config.run.chunk),
        chunk_floor=1,
        checkpoints=driver.Checkpoints(directory, step_unit="intervals"),
        progress=driver.bar if progress else None,
        label=arm,
        max_chunks=max_chunks,
        seed_loop=config.run.get("seed_loop", "vmap"),
    )
    if run is None:
        return None
    return ArmResult(arm, run.metrics, seeds, run.seconds, run.resumed_from)


def rows(result: ArmResult) -> list[dict[str, Any]]:
    """One JSON-serialisable row per (seed, task)."""
    out = []
    m = result.metrics
    for i, seed in enumerate(result.seeds):
        for t in range(np.shape(m.step)[1]):
            row = {"arm": result.arm, "seed": seed, "task": t}
            row.update({f: np.asarray(getattr(m, f))[i, t].item() for f in sl.TaskMetrics._fields})
            out.append(row)
    return out
