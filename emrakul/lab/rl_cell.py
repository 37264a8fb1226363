"""One RL cell: a DQN program's seeds, vmapped, trained in compiled chunks with checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul import controllers as ctl
from emrakul.lab.checkpoint import Checkpointer
from emrakul.lab.hosts import dqn

# ---------------------------------------------------------------------------------------------
# One cell: seeds vmapped, chunked, checkpointed


class Carry(NamedTuple):
    """What a checkpoint holds: the vmapped state, the metrics so far and the wall time."""

    state: dqn.DQNState
    metrics: dqn.DQNMetrics  # numpy, leaves [seeds, num_intervals]
    seconds: Any  # float32 scalar, wall seconds over all calls


class CellRun(NamedTuple):
    """A finished cell."""

    metrics: dqn.DQNMetrics  # numpy, [seeds, num_intervals]
    env_steps: np.ndarray  # [seeds]
    updates: np.ndarray  # [seeds]
    seconds: float
    resumed_from: int  # intervals restored from a checkpoint (0: fresh)


class NonFiniteLossError(FloatingPointError):
    """The TD loss became NaN/inf; the last good checkpoint is kept."""


def chunk_size(num_intervals: int, chunk: int) -> int:
    """``chunk``, or the largest divisor of ``num_intervals`` in ``[ceil(chunk / 2), chunk]``
    (then every chunk is the same compiled program; otherwise a shorter last chunk compiles a
    second one)."""
    chunk = min(chunk, num_intervals)
    for d in range(chunk, (chunk + 1) // 2 - 1, -1):
        if d >= 1 and num_intervals % d == 0:
            return d
    return chunk


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


_LAST: dict[str, Any] = {}  # the most recent program and its jitted pieces


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


def _jitted(program: dqn.DQN) -> tuple[Any, Any]:
    """``jit(vmap(init))`` and ``jit(vmap(run))`` over seeds (kept with the last program)."""
    if _LAST.get("program") is not program or "run" not in _LAST:
        init = jax.jit(jax.vmap(program.init))
        run = jax.jit(jax.vmap(program.run, in_axes=(0, None)), static_argnums=1)
        if _LAST.get("program") is program:
            _LAST.update(init=init, run=run)
        return init, run
    return _LAST["init"], _LAST["run"]


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
    n = program.num_intervals
    chunk = chunk_size(n, chunk)
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
    init, run = _jitted(program)
    abstract_state = jax.eval_shape(init, keys)
    one = jax.eval_shape(
        lambda s: program.run(s, 1)[1],
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), abstract_state),
    )
    abstract = Carry(
        state=abstract_state,
        metrics=jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((len(seeds), n, *x.shape[1:]), x.dtype), one
        ),
        seconds=jax.ShapeDtypeStruct((), jnp.float32),
    )
    ckpt = Checkpointer(checkpoint_dir, max_to_keep=2) if checkpoint_dir else None
    done, carry = 0, None
    if ckpt is not None and (restored := ckpt.restore_latest(abstract)) is not None:
        done, carry = restored
        carry = carry._replace(metrics=jax.tree.map(np.array, carry.metrics))
        if progress:
            print(f"{label}: resuming from interval {done}/{n}", flush=True)
    resumed = done
    if carry is None:
        carry = Carry(
            state=init(keys),
            metrics=jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract.metrics),
            seconds=np.float32(0.0),
        )
    prior = float(carry.seconds)
    total_steps = program.warmup_env_steps + n * program.updates_per_interval * (
        program.env_steps_per_update
    )
    start = time.time()
    chunks = 0
    while done < n:
        if max_chunks is not None and chunks >= max_chunks:
            return None
        size = min(chunk, n - done)
        state, metrics = run(carry.state, size)
        metrics = jax.tree.map(np.asarray, metrics)  # waits for the chunk
        if not np.isfinite(metrics.loss).all():
            bad = sorted({int(seeds[i]) for i in np.nonzero(~np.isfinite(metrics.loss))[0]})
            raise NonFiniteLossError(
                f"{label}: non-finite TD loss in intervals {done}-{done + size - 1} (seeds "
                f"{bad}); stopped. Last good checkpoint: interval {done}. Lower config.dqn.lr."
            )
        table = carry.metrics
        for full, new in zip(table, metrics, strict=True):
            if full is not None:  # fields a program does not measure are None
                full[:, done : done + size] = new
        done += size
        chunks += 1
        elapsed = time.time() - start
        carry = Carry(state, table, np.float32(prior + elapsed))
        if ckpt is not None:
            ckpt.save(done, carry)
        if progress:
            episodes = int(metrics.episodes.sum())
            ret = float(metrics.return_sum.sum()) / episodes if episodes else math.nan
            eta = elapsed / (done - resumed) * (n - done)
            print(
                f"{label}: {done}/{n} intervals | env steps {int(metrics.env_steps[0, -1]):,}"
                f"/{total_steps:,} | return {ret:.2f} ({episodes} episodes) | sparsity "
                f"{max(0.0, float(metrics.sparsity[:, -1].mean())):.3f} | elapsed "
                f"{_clock(prior + elapsed)} | ETA {_clock(eta)}",
                flush=True,
            )
    return CellRun(
        metrics=carry.metrics,
        env_steps=np.asarray(carry.state.env_steps),
        updates=np.asarray(carry.state.updates),
        seconds=float(carry.seconds),
        resumed_from=resumed,
    )
