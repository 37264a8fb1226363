"""One driver for every host :class:`~emrakul.lab.program.Program`: chunks, checkpoints, sharding.

The seeds of one program run as one compiled chunk of surgery intervals (``run`` lifted over
the seeds by :func:`emrakul.lab.sharding.over_seeds`, jitted with a fixed number of intervals),
called again and again from Python, so that nothing recompiles between chunks while a run still
shows progress, checkpoints and stops on a non-finite loss. After each chunk the whole state and
the metrics recorded so far are saved with orbax (:mod:`emrakul.lab.checkpoint`); a run started
again with the same directory resumes from the newest checkpoint that loads and ends with
exactly the metrics of an uninterrupted run. With a mesh (:func:`emrakul.lab.sharding.seed_mesh`)
the seeds axis of every leaf is split over the devices (GSPMD; Xu et al. 2021, "GSPMD: General
and Scalable Parallelization for ML Computation Graphs").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.lab import driver_lysis as dly
from emrakul.lab import sharding as shd
from emrakul.lab.checkpoint import Checkpointer
from emrakul.lab.program import Program, check_program
from emrakul.lab.progress import Progress, bar, clock, line  # noqa: F401

STEP_UNITS = ("intervals", "chunks")


class NonFiniteLossError(FloatingPointError):
    """A program's loss became NaN/inf; the last good checkpoint is kept."""


class Carry(NamedTuple):
    """What a checkpoint holds: the state (leading seeds axis) and the metrics so far."""

    state: Any
    metrics: Any  # leaves [seeds, num_intervals, ...]


class TimedCarry(NamedTuple):
    """A :class:`Carry` that also keeps the wall seconds of all calls (float32 scalar)."""

    state: Any
    metrics: Any
    seconds: Any


class Checkpoints(NamedTuple):
    """Where and how a run is checkpointed.

    Attributes:
      directory: the orbax directory (``None``: no checkpoints).
      step_unit: what a checkpoint's step counts, ``"intervals"`` or ``"chunks"`` done.
      max_to_keep: checkpoints kept (at least 2, so that a damaged one falls back).
      wall_clock: keep the wall seconds of all calls in the checkpoint (:class:`TimedCarry`).
      seed_loop_marker: record the seed loop in ``<directory>.seed_loop`` and refuse to resume
        checkpoints written with another one (no marker: ``"vmap"``).
    """

    directory: str | None = None
    step_unit: str = "intervals"
    max_to_keep: int = 3
    wall_clock: bool = False
    seed_loop_marker: bool = False


NO_CHECKPOINTS = Checkpoints()


class Run(NamedTuple):
    """A finished run of all seeds."""

    metrics: Any  # numpy, [seeds, num_intervals, ...]
    final: dict[str, np.ndarray]  # Program.final, [seeds]
    seconds: float  # wall seconds of this call
    total_seconds: float  # of all calls (this call's without Checkpoints.wall_clock)
    resumed_from: int  # steps restored from a checkpoint, in Checkpoints.step_unit (0: fresh)
    compilations: int  # programs compiled for the chunks (1: nothing recompiled)
    lyses: int = 0  # lysis events in this call (the program compacted itself between chunks)


def chunk_size(num_intervals: int, chunk: int, floor: int | None = None) -> int:
    """The chunk of a run: the largest divisor of ``num_intervals`` in ``[floor, chunk]``
    (every chunk is then the same compiled program), else ``chunk`` (a shorter last chunk
    compiles a second one). ``floor`` defaults to ``ceil(chunk / 2)``; ``floor=1`` always
    finds a divisor. ``chunk`` is clipped to ``num_intervals``.

    Raises:
      ValueError: ``num_intervals`` or ``chunk`` below 1.
    """
    if num_intervals < 1 or chunk < 1:
        raise ValueError(f"need num_intervals >= 1 and chunk >= 1, got {num_intervals}, {chunk}")
    chunk = min(chunk, num_intervals)
    floor = (chunk + 1) // 2 if floor is None else max(1, floor)
    for d in range(chunk, floor - 1, -1):
        if num_intervals % d == 0:
            return d
    return chunk


class _Compiled(NamedTuple):
    """The jitted pieces over the seeds and the abstract checkpoint they restore into."""

    init: Any
    run: Any
    final: Any
    abstract: Any  # the carry as jax.ShapeDtypeStruct, with shardings
    metrics: Any  # the metrics table as jax.ShapeDtypeStruct (no sharding)


_LAST: dict[str, Any] = {}  # the most recent program's jitted pieces (a resumed run reuses them)


def _compile(program: Program, num_seeds: int, mesh, seed_loop: str, timed: bool) -> _Compiled:
    """Lifts the program over ``num_seeds`` seeds and jits it (cached for the last program)."""
    key = (seed_loop, mesh, num_seeds, timed)
    if _LAST.get("program") is program and _LAST.get("key") == key:
        return _LAST["compiled"]

    def lift(fn):
        return shd.over_seeds(fn, seed_loop, mesh)

    init_seeds = lift(program.init)
    state = jax.eval_shape(init_seeds, jax.ShapeDtypeStruct((num_seeds, 2), jnp.uint32))
    per_seed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)
    one = jax.eval_shape(lambda s: program.run(s, 1)[1], per_seed)
    n = program.num_intervals
    table = jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_seeds, n, *x.shape[1:]), x.dtype), one)
    seconds = (jax.ShapeDtypeStruct((), jnp.float32),) if timed else ()
    abstract = (TimedCarry if timed else Carry)(state, table, *seconds)
    init_sh, run_sh = {}, {}
    if mesh is not None:  # every per-seed leaf has a leading seeds axis: split it
        sh = shd.seed_shardings(abstract, mesh, num_seeds)
        init_sh = {"out_shardings": sh.state}
        run_sh = {"in_shardings": (sh.state,), "out_shardings": (sh.state, sh.metrics)}
        restore_into = shd.abstract_sharded(abstract, mesh, num_seeds)
    else:  # restore onto the default device, whichever devices saved the checkpoint
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restore_into = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
        )
    compiled = _Compiled(
        init=jax.jit(init_seeds, **init_sh),
        run=jax.jit(
            lambda s, size: lift(lambda x: program.run(x, size))(s), static_argnums=1, **run_sh
        ),
        final=jax.jit(lift(program.final)),
        abstract=restore_into,
        metrics=table,
    )
    _LAST.clear()
    _LAST.update(program=program, key=key, compiled=compiled)
    return compiled


def _check_finite(program: Program, metrics, seeds, label: str, lo: int, kept: str) -> None:
    """Raises :class:`NonFiniteLossError` if the chunk's loss is not finite everywhere."""
    losses = np.asarray(getattr(metrics, program.loss_field))
    if np.isfinite(losses).all():
        return
    bad = sorted({int(seeds[i]) for i in np.nonzero(~np.isfinite(losses))[0]})
    hi = lo + losses.shape[1] - 1
    raise NonFiniteLossError(
        f"{label}: non-finite {program.loss_name} in intervals {lo}-{hi} (seeds {bad}); "
        f"stopped. Last good checkpoint: {kept}. {program.remedy}"
    )


class _Start(NamedTuple):
    """Where a call starts: the carry (restored or fresh), the intervals and steps it holds, the
    checkpointer (``None`` without a directory), the program that wrote the carry (another one
    after a lysis) and the lysis events so far."""

    carry: Any
    done: int
    step: int
    ckpt: Any
    program: Program
    events: list


def _start(program, compile_for, keys, checkpoints, chunk, seed_loop, checkpointer) -> _Start:
    ckpt, restored, events = None, None, []
    if checkpoints.directory is not None:
        ckpt = checkpointer(checkpoints.directory, max_to_keep=checkpoints.max_to_keep)
        events = dly.start_events(program, checkpoints.directory)
        held: dict[int, Program] = {}  # step -> the program that wrote it (rebuilt once)

        def program_for(step: int) -> Program:
            if step not in held:
                held[step] = dly.program_at(program, events, step)
            return held[step]

        restored = ckpt.restore_latest(lambda step: compile_for(program_for(step)).abstract)
        if checkpoints.seed_loop_marker:
            shd.check_seed_loop_marker(checkpoints.directory, seed_loop, restored is not None)
        at = None if restored is None else restored[0]
        events = dly.settle_events(checkpoints.directory, events, at)
    if restored is not None:
        step, carry = restored
        per_step = chunk if checkpoints.step_unit == "chunks" else 1
        done = min(step * per_step, program.num_intervals)
        return _Start(carry, done, step, ckpt, program_for(step), events)
    compiled = compile_for(program)
    state = compiled.init(keys)
    table = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), compiled.metrics)
    carry = _pack(state, table, 0.0 if checkpoints.wall_clock else None)
    return _Start(carry, 0, 0, ckpt, program, [])


def _check_args(program, seeds, chunk, checkpoints, seed_loop, mesh) -> None:
    check_program(program)
    if len(seeds) < 1:
        raise ValueError("drive needs at least one seed")
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if checkpoints.step_unit not in STEP_UNITS:
        raise ValueError(f"step_unit must be one of {STEP_UNITS}, got {checkpoints.step_unit!r}")
    if seed_loop not in shd.SEED_LOOPS:
        raise ValueError(f"seed_loop must be one of {shd.SEED_LOOPS}, got {seed_loop!r}")
    if mesh is not None:
        shd.check_divisible(len(seeds), mesh)
        if program.lysis is not None:
            raise ValueError("a program that lyses between chunks cannot run on a mesh (yet)")


class _Loop(NamedTuple):
    """The fixed settings of one call's chunk loop."""

    compile_for: Callable[[Program], _Compiled]
    seeds: Sequence[int]
    chunk: int
    checkpoints: Checkpoints
    progress: Callable[[Progress], None] | None
    label: str
    max_chunks: int | None


def _pack(state, table, seconds: float | None):
    return Carry(state, table) if seconds is None else TimedCarry(state, table, np.float32(seconds))


class _Done(NamedTuple):
    """What the chunk loop ends with: the carry, the last program and its jitted pieces, the
    wall seconds, the programs compiled and the lysis events of this call."""

    carry: Any
    program: Program
    compiled: _Compiled
    seconds: float
    compilations: int
    lyses: int


def _chunks(loop: _Loop, start: _Start) -> _Done | None:
    """Runs chunks from interval ``start.done`` to the end (``None`` when stopped by
    ``max_chunks``); lyses when due, saves a checkpoint and reports progress after each."""
    carry, done, step, ckpt, program = (
        start.carry,
        start.done,
        start.step,
        start.ckpt,
        start.program,
    )
    n, unit, timed = program.num_intervals, loop.checkpoints.step_unit, loop.checkpoints.wall_clock
    compiled = loop.compile_for(program)
    runs, lyses = [compiled.run], 0
    prior = float(carry.seconds) if timed else 0.0
    resumed, t0, calls = done, time.time(), 0

    def report(done: int, metrics) -> None:
        elapsed = time.time() - t0
        loop.progress(Progress(loop.label, done, n, resumed, elapsed, prior, metrics,
                               program.describe))  # fmt: skip

    if loop.progress is not None and done > 0:
        report(done, None)
    while done < n:
        if loop.max_chunks is not None and calls >= loop.max_chunks:
            return None
        size = min(loop.chunk, n - done)
        state, metrics = compiled.run(carry.state, size)
        host = shd.to_host(metrics)  # waits for the chunk
        kept = f"{unit[:-1]} {step}" if ckpt is not None and step else "none"
        _check_finite(program, host, loop.seeds, loop.label, done, kept)
        table = jax.tree.map(
            lambda full, new, lo=done: jax.lax.dynamic_update_slice_in_dim(full, new, lo, axis=1),
            carry.metrics,
            metrics,
        )
        done, step, calls = done + size, step + (1 if unit == "chunks" else size), calls + 1
        if done < n and dly.due(program, -(-done // loop.chunk)):
            where = loop.checkpoints.directory if ckpt is not None else None
            lysed = dly.after_chunk(program, state, where, start.events, step)
            if lysed is not None:
                program, state = lysed
                compiled, lyses = loop.compile_for(program), lyses + 1
                runs.append(compiled.run)
        carry = _pack(state, table, prior + time.time() - t0 if timed else None)
        if ckpt is not None:
            ckpt.save(step, carry)
        if loop.progress is not None:
            report(done, host)
    compilations = sum(r._cache_size() for r in {id(r): r for r in runs}.values())
    return _Done(carry, program, compiled, time.time() - t0, compilations, lyses)


def drive(
    program: Program,
    seeds: Sequence[int],
    *,
    chunk: int,
    checkpoints: Checkpoints = NO_CHECKPOINTS,
    progress: Callable[[Progress], None] | None = None,
    label: str = "",
    max_chunks: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    seed_loop: str = "vmap",
    chunk_floor: int | None = None,
    checkpointer: Callable[..., Checkpointer] = Checkpointer,
) -> Run | None:
    """Runs ``seeds`` of ``program`` in checkpointed chunks of one compiled program.

    Args:
      program: the host program (:class:`~emrakul.lab.program.Program`).
      seeds: the seeds (``jax.random.PRNGKey(seed)`` each).
      chunk: surgery intervals per compiled chunk (see :func:`chunk_size` and ``chunk_floor``).
      checkpoints: where and how to checkpoint (:class:`Checkpoints`).
      progress: a reporter called after each chunk (:func:`bar`, :func:`line`) or ``None``.
      label: the run's name in progress lines and errors.
      max_chunks: stop after this many chunks of this call (simulates an interruption).
      mesh: split the seeds over this mesh (:func:`emrakul.lab.sharding.seed_mesh`).
      seed_loop: ``"vmap"`` or ``"map"`` (:func:`emrakul.lab.sharding.over_seeds`).
      chunk_floor: the smallest divisor :func:`chunk_size` accepts.
      checkpointer: the checkpointer class (:class:`~emrakul.lab.checkpoint.Checkpointer`).

    Returns:
      A :class:`Run`, or ``None`` when stopped by ``max_chunks``.

    Raises:
      NonFiniteLossError: the program's loss became NaN or inf (the last checkpoint is kept).
      ValueError: bad arguments, seeds that do not split over ``mesh``, or checkpoints written
        with another seed loop.
    """
    _check_args(program, seeds, chunk, checkpoints, seed_loop, mesh)
    shd.warn_native_on_mesh(mesh, seed_loop)
    chunk = chunk_size(program.num_intervals, int(chunk), chunk_floor)

    def compile_for(p: Program) -> _Compiled:
        return _compile(p, len(seeds), mesh, seed_loop, checkpoints.wall_clock)

    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
    if mesh is not None:
        keys = shd.shard_seeds(keys, mesh, len(seeds))
    start = _start(program, compile_for, keys, checkpoints, chunk, seed_loop, checkpointer)
    if mesh is not None:
        start = start._replace(carry=shd.shard_seeds(start.carry, mesh, len(seeds)))
    loop = _Loop(compile_for, seeds, chunk, checkpoints, progress, label, max_chunks)
    out = _chunks(loop, start)
    if out is None:
        return None
    carry = out.carry
    return Run(
        metrics=shd.to_host(carry.metrics),
        final=shd.to_host(out.compiled.final(carry.state)),
        seconds=out.seconds,
        total_seconds=float(carry.seconds) if checkpoints.wall_clock else out.seconds,
        resumed_from=start.step,
        compilations=out.compilations,
        lyses=out.lyses,
    )
