"""The lysis events of a run driven in chunks: which program each checkpoint belongs to.

A program that compacts itself between chunks (:class:`~emrakul.lab.program.Lysis`) changes the
shapes of its state, so a checkpoint can only be restored into the program that wrote it. Beside
the checkpoint directory, ``<directory>.lysis.json`` lists the lysis events in order: the
checkpoint step from which on each record's program holds (written before that checkpoint, so a
crash in between leaves only older checkpoints, which still belong to the previous program).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from emrakul.lab.program import Program

Event = tuple[int, dict]  # (first checkpoint step of the program, its Lysis record)


def events_path(directory: str) -> str:
    """Where the events of the checkpoints in ``directory`` are kept."""
    return f"{os.path.abspath(directory)}.lysis.json"


def read_events(directory: str) -> list[Event]:
    """The recorded events, oldest first (none when the run never lysed)."""
    path = events_path(directory)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(e["step"]), e["record"]) for e in json.load(f)["events"]]


def start_events(program: Program, directory: str) -> list[Event]:
    """The events of the checkpoints in ``directory`` for a run of ``program``.

    Raises:
      ValueError: the checkpoints were written by a run that lysed and ``program`` does not
        (they would not restore into it).
    """
    events = read_events(directory)
    if events and program.lysis is None:
        raise ValueError(
            f"the checkpoints in {directory} were written by a run that lysed its host "
            f"({events_path(directory)}); resume them with the same lysis settings "
            "(config.lysis.every) or use a new workdir"
        )
    return events


def settle_events(directory: str, events: list[Event], step: int | None) -> list[Event]:
    """The events that hold for a run restored at ``step`` (``None``: started afresh), written
    back so that a record of an abandoned run never outlives it."""
    kept = [] if step is None else [e for e in events if e[0] <= step]
    if kept != events and jax.process_index() == 0:
        if kept:
            _write(directory, kept)
        else:
            os.remove(events_path(directory))
    return kept


def _write(directory: str, events: list[Event]) -> None:
    path = events_path(directory)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"events": [{"step": s, "record": r} for s, r in events]}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_event(directory: str, events: list[Event], step: int, record: dict) -> list[Event]:
    """Records that the checkpoints from ``step`` on hold ``record``'s program (replacing any
    event at or after ``step``, left by a run that was interrupted and is now redone)."""
    events = [e for e in events if e[0] < step] + [(int(step), record)]
    if jax.process_index() == 0:
        _write(directory, events)
    return events


def program_at(base: Program, events: list[Event], step: int) -> Program:
    """The program that wrote checkpoint ``step``: the base program, or the newest event's at or
    before ``step`` rebuilt from its record."""
    held = [r for s, r in events if s <= step]
    if not held or base.lysis is None:
        return base
    return base.lysis.rebuild(held[-1])


def due(program: Program, chunks_done: int) -> bool:
    """Whether ``program`` tries a lysis after its ``chunks_done``-th chunk."""
    return program.lysis is not None and chunks_done % program.lysis.every == 0


def after_chunk(
    program: Program, state: Any, directory: str | None, events: list[Event], step: int
) -> tuple[Program, Any] | None:
    """``program.lysis.lyse`` on every seed's state (brought to the host) after a chunk: the
    smaller program and state, or ``None`` when nothing was removed. With a checkpoint
    ``directory`` the event is recorded (``events`` updated in place) before the checkpoint of
    ``step`` that holds it is saved."""
    out = program.lysis.lyse(jax.tree.map(jax.device_get, state))
    if out is None:
        return None
    program, state, record = out
    if directory is not None:
        events[:] = write_event(directory, events, step, record)
    return program, state
