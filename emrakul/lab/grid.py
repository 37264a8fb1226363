"""A resumable grid of cells: a plan, a shared results file, per-cell locks, resumption.

An experiment sweep is a list of *cells* (one setting each), every cell run for a list of
seeds. Each finished cell appends one row per seed to a results file in the work directory;
the rows already there say which seeds of which cell are done, so an interrupted sweep resumes
where it stopped and several processes (or sessions) can share one directory: a lock file per
running cell keeps two of them from running the same cell, and rows are appended in one locked,
synced write, so a kill mid-write damages at most one line, which reading skips.

The results file is JSON lines (``*.jsonl``) or CSV with a fixed header (any other name).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import socket
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from absl import logging


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a results file (``[]`` when it does not exist).

    A JSON-lines file skips a damaged line (a kill mid-write) with a warning; a CSV file's
    values are the strings as written.
    """
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        if not path.endswith(".jsonl"):
            return list(csv.DictReader(f))
        rows = []
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("%s line %d is damaged; ignored", path, i + 1)
        return rows


def _encode(rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None, header: bool) -> str:
    if fields is None:
        return "".join(json.dumps(dict(r)) + "\n" for r in rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, list(fields), lineterminator="\r\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def append_rows(
    path: str, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None
) -> None:
    """Appends ``rows`` to a results file in one locked, synced write.

    Args:
      path: the results file (``*.jsonl``: JSON lines; otherwise CSV).
      rows: the rows to add.
      fields: the CSV columns (written as the header when the file is empty); ``None`` for
        JSON lines.

    Raises:
      ValueError: ``fields`` missing for a CSV file or given for a JSON-lines one.
    """
    if (fields is None) != path.endswith(".jsonl"):
        raise ValueError(f"{path}: CSV results need fields, JSON lines (.jsonl) take none")
    with open(path, "a+", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            text = _encode(rows, fields, header=size == 0)
            if size > 0:  # a line cut by a kill: start a fresh one
                f.seek(size - 1)
                if f.read(1) != "\n":
                    text = "\n" + text
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def done_seeds(
    rows: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Hashable]
) -> dict[Hashable, set[int]]:
    """The seeds present in ``rows``, per cell key (``key(row)``)."""
    out: dict[Hashable, set[int]] = {}
    for r in rows:
        out.setdefault(key(r), set()).add(int(r["seed"]))
    return out


def _owner_alive(path: str, me: dict[str, Any]) -> bool:
    try:
        with open(path) as f:
            owner = json.load(f)
        alive = owner.get("host") == me["host"] and owner.get("pid") != me["pid"]
        if alive:
            os.kill(int(owner["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False  # stale or unreadable: take it over
    return alive


@contextlib.contextmanager
def cell_lock(workdir: str, name: str) -> Iterator[bool]:
    """Yields whether this process holds cell ``name`` (False: another live process runs it).

    The lock is ``DIR/locks/<name>.lock`` holding the owner's host and pid; a lock whose
    process is gone (or that another host wrote) is taken over.
    """
    os.makedirs(os.path.join(workdir, "locks"), exist_ok=True)
    path = os.path.join(workdir, "locks", f"{name}.lock")
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    if os.path.exists(path) and _owner_alive(path, me):
        yield False
        return
    with open(path, "w") as f:
        json.dump(me, f)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def seed_label(seeds: Sequence[int]) -> str:
    """A file-name-safe label of a seed list (``seeds0-3``, or ``seeds0_2_5``)."""
    s = sorted(seeds)
    if s == list(range(s[0], s[-1] + 1)):
        return f"seeds{s[0]}-{s[-1]}"
    return "seeds" + "_".join(map(str, s))


class CellStatus(NamedTuple):
    """What the grid did with one cell."""

    cell: Any
    status: str  # "done", "skipped" (finished before), "busy" (locked), "interrupted"
    seeds: list[int]  # the seeds this call ran
    resumed_from: int = 0  # intervals restored from a checkpoint


class Finished(NamedTuple):
    """What running one cell gave: its rows (one per seed) and where it resumed."""

    rows: list[dict[str, Any]]
    resumed_from: int = 0


class Grid(NamedTuple):
    """Where a grid keeps its files and how it names its cells.

    Attributes:
      workdir: the work directory (results file, ``locks/``, checkpoints).
      results: the results file's name in ``workdir`` (``*.jsonl`` or CSV).
      key: a cell's identity, from a cell or from one of its rows (equal for both).
      name: a file-name-safe name of a cell (its lock; its checkpoints).
      checkpoint: the checkpoint directory of a cell's run of some seeds (removed once its
        rows are written).
      fields: the CSV columns; ``None`` for JSON lines.
      write: whether this process writes rows (False: the non-writing processes of a
        multi-process run, which compute their shards only).
      locks: whether to take cell locks (False where every process must run every cell).
    """

    workdir: str
    results: str
    key: Callable[[Any], Hashable]
    name: Callable[[Any], str]
    checkpoint: Callable[[Any, Sequence[int]], str]
    fields: Sequence[str] | None = None
    write: bool = True
    locks: bool = True

    @property
    def path(self) -> str:
        """The results file."""
        return os.path.join(self.workdir, self.results)

    def rows(self) -> list[dict[str, Any]]:
        """The rows written so far."""
        return read_rows(self.path)

    def missing(self, cell: Any, seeds: Sequence[int]) -> list[int]:
        """The seeds of ``seeds`` that ``cell`` has no row for yet."""
        have = done_seeds(self.rows(), self.key).get(self.key(cell), set())
        return [s for s in seeds if s not in have]


RunCell = Callable[[Any, list[int], str], Finished | None]


def run_cell_once(grid: Grid, cell: Any, seeds: Sequence[int], run: RunCell) -> CellStatus:
    """Runs the missing seeds of one cell under its lock; appends its rows when it finishes.

    ``run(cell, todo_seeds, checkpoint_dir)`` returns :class:`Finished`, or ``None`` when it
    stopped before the end (its checkpoint stays for the next call).
    """
    lock = cell_lock(grid.workdir, grid.name(cell)) if grid.locks else contextlib.nullcontext(True)
    with lock as mine:
        if not mine:
            return CellStatus(cell, "busy", [])
        todo = grid.missing(cell, seeds)
        if not todo:  # a checkpoint left by a kill between the append and its removal
            shutil.rmtree(grid.checkpoint(cell, list(seeds)), ignore_errors=True)
            return CellStatus(cell, "skipped", [])
        ckpt = grid.checkpoint(cell, todo)
        done = run(cell, todo, ckpt)
        if done is None:
            return CellStatus(cell, "interrupted", todo)
        if grid.write:
            append_rows(grid.path, done.rows, grid.fields)
            shutil.rmtree(ckpt, ignore_errors=True)
        return CellStatus(cell, "done", todo, done.resumed_from)


def run_grid(
    grid: Grid,
    cells: Sequence[Any],
    seeds: Sequence[int],
    run: RunCell,
    *,
    after: Callable[[CellStatus], None] | None = None,
) -> list[CellStatus]:
    """Runs every unfinished cell in order; stops at the first interrupted one.

    Args:
      grid: the files and names of the grid.
      cells: the plan's cells.
      seeds: the seeds every cell should have.
      run: runs a cell's missing seeds (see :func:`run_cell_once`).
      after: called with each cell's status (printing, writing a report).

    Returns:
      One :class:`CellStatus` per cell, in order, up to the interrupted one.
    """
    os.makedirs(grid.workdir, exist_ok=True)
    statuses = []
    for cell in cells:
        status = run_cell_once(grid, cell, seeds, run)
        statuses.append(status)
        if after is not None:
            after(status)
        if status.status == "interrupted":
            break
    return statuses
