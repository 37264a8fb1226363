"""One RL cell: a DQN program's seeds, vmapped, trained in compiled chunks with checkpoints.

A thin layer over :func:`emrakul.lab.driver.drive`: checkpoint steps count intervals, the wall
clock of all calls is kept in the checkpoint, and each chunk prints one progress line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from emrakul import controllers as ctl
from emrakul.lab import driver
from emrakul.lab.driver import NonFiniteLossError, chunk_size
from emrakul.lab.driver import TimedCarry as Carry
from emrakul.lab.hosts import dqn
from emrakul.lab.progress import clock as _clock

__all__ = [
    "Carry",
    "CellRun",
    "NonFiniteLossError",
    "_clock",
    "build_program",
    "chunk_size",
    "run_cell",
]


class CellRun(NamedTuple):
    """A finished cell."""

    metrics: dqn.DQNMetrics  # numpy, [seeds, num_intervals]
    env_steps: np.ndarray  # [seeds]
    updates: np.ndarray  # [seeds]
    seconds: float
    resumed_from: int  # intervals restored from a checkpoint (0: fresh)


_LAST: dict[str, Any] = {}  # the most recent program


def build_program(config: dqn.DQNConfig, controller: str | ctl.Controller) -> dqn.DQN:
    """``dqn.make_dqn(config, controller)``; the same config and controller name as the previous
    call give the previous program back, so that a cell resumed in the same process (tests,
    notebooks) reuses its compiled chunk instead of compiling it again."""
    key = (config, controller) if isinstance(controller, str) else None
    if key is None or _LAST.get("key") != key:
        program = dqn.make_dqn(config, controller)
        _LAST.clear()
        _LAST.update(key=key, program=program)
    return _LAST["program"]


def run_cell(
    program: dqn.DQN,
    seeds: Sequence[int],
    *,
    checkpoint_dir: str | None,
    chunk: int,
    label: str = "",
    progress: bool = True,
    max_chunks: int | None = None,
) -> CellRun | None:
    """Trains ``seeds`` of one DQN program, vmapped, in chunks with checkpoints.

    Args:
      program: a :func:`emrakul.lab.hosts.dqn.make_dqn` program.
      seeds: the seeds (``jax.random.PRNGKey(seed)`` each).
      checkpoint_dir: the orbax directory of this cell (``None``: no checkpoints).
      chunk: surgery intervals per compiled chunk (see :func:`chunk_size`).
      label: the progress lines' prefix.
      progress: print a progress line per chunk.
      max_chunks: stop after this many chunks of this call (simulates an interruption); the
        cell is then unfinished and ``None`` is returned.

    Returns:
      A :class:`CellRun`, or ``None`` when stopped by ``max_chunks``.

    Raises:
      NonFiniteLossError: a non-finite TD loss (the previous chunk's checkpoint is kept).
    """
    run = driver.drive(
        program.program,
        seeds,
        chunk=chunk,
        checkpoints=driver.Checkpoints(checkpoint_dir or None, max_to_keep=2, wall_clock=True),
        progress=driver.line if progress else None,
        label=label,
        max_chunks=max_chunks,
    )
    if run is None:
        return None
    return CellRun(
        metrics=run.metrics,
        env_steps=run.final["env_steps"],
        updates=run.final["updates"],
        seconds=run.total_seconds,
        resumed_from=run.resumed_from,
    )
