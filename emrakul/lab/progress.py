"""Progress reports of a driven run: a bar on stderr or one line per chunk on stdout.

A reporter is a function of one :class:`Progress` (what the driver knows after a chunk), so a
run's display is chosen by its caller; the program contributes its own fields through
``Program.describe``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple


class Progress(NamedTuple):
    """What a progress reporter is told after each chunk (and once on resuming)."""

    label: str
    done: int  # intervals done
    total: int  # intervals of the run
    resumed: int  # intervals restored at the start of this call
    elapsed: float  # wall seconds of this call
    prior: float  # wall seconds of earlier calls (with ``Checkpoints.wall_clock``)
    metrics: Any  # the chunk's metrics as numpy [seeds, size, ...]; None when resuming
    describe: Callable[[Any], str]


def clock(seconds: float) -> str:
    """``1h02m03s`` or ``2m03s`` (``?`` for a non-finite time)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def bar(p: Progress) -> None:
    """A progress bar on stderr: ``label [####....] done/total intervals, ETA``."""
    if p.metrics is None:
        return
    width, frac = 30, p.done / max(p.total, 1)
    eta = p.elapsed / frac - p.elapsed if frac > 0 else float("nan")
    filled = "#" * int(width * frac) + "." * (width - int(width * frac))
    sys.stderr.write(f"\r{p.label:>10} [{filled}] {p.done}/{p.total} intervals, ETA {eta:5.0f}s ")
    if p.done >= p.total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def line(p: Progress) -> None:
    """A progress line on stdout: intervals, the program's fields, elapsed time and ETA."""
    if p.metrics is None:
        print(f"{p.label}: resuming from interval {p.done}/{p.total}", flush=True)
        return
    eta = p.elapsed / max(p.done - p.resumed, 1) * (p.total - p.done)
    print(
        f"{p.label}: {p.done}/{p.total} intervals | {p.describe(p.metrics)} | elapsed "
        f"{clock(p.prior + p.elapsed)} | ETA {clock(eta)}",
        flush=True,
    )
