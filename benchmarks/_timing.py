"""Timing helpers for the benchmarks: interleaved repeats, medians, ratios in one process.

The machine is shared and noisy, so every benchmark times its candidates *interleaved*
(round-robin, one call each per round) and reports the median over rounds; ratios are
computed between medians measured in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import jax
import numpy as np


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]], rounds: int = 30, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each zero-argument function, timed round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def cold_medians(
    fns: Mapping[str, Callable[[], object]],
    rounds: int = 30,
    warmup: int = 2,
    flush_mb: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Median seconds per *cold* call: before every timed call the calling thread reads a
    ``flush_mb`` MB buffer (twice this machine's L3; read-only, so the timed call pays no
    write-backs of the flush's own lines) and the runtime's worker threads sit idle meanwhile
    (a few ms); the order of the candidates is shuffled every round, so that no candidate always
    follows the same one. The other core's private L2 is not flushed."""
    buf = np.ones(flush_mb * (1 << 20) // 4, np.float32)  # written once, here
    rng = np.random.default_rng(seed)
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            float(buf[::16].sum())  # one read per 64-byte cache line
            t0 = time.perf_counter()
            jax.block_until_ready(fns[names[i]]())
            times[names[i]].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def back_to_back(fn: Callable[..., object], k: int) -> Callable[..., object]:
    """``fn`` called ``k`` times in a row, each result awaited before the next call (one timed
    round of a stream of requests, or of a training loop's consecutive steps; no pipelining of
    asynchronous dispatches). Returns the last result."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")

    def run(*args):
        for _ in range(k):
            out = jax.block_until_ready(fn(*args))
        return out

    return run


def carry_runner(step: Callable[..., tuple], state: list, n_carry: int) -> Callable[[], tuple]:
    """A zero-argument call of ``step(*state)`` that stores the step's outputs back into the
    first ``n_carry`` entries of the list ``state`` (so donated buffers are never reused)."""

    def call():
        out = step(*state)
        state[:n_carry] = out
        return out

    return call


def step_ratios(
    steps: Mapping[str, tuple[Callable[..., tuple], list, int]],
    rounds: int,
    repeats: int,
    block: int = 1,
    base: str = "dense",
    verbose: bool = True,
) -> dict[str, tuple[float, float]]:
    """Times train steps that carry their state, interleaved, and compares them with ``base``.

    Args:
      steps: name -> ``(step, state, n_carry)`` as for :func:`carry_runner`.
      rounds, repeats: ``repeats`` runs of :func:`interleaved_medians` with ``rounds`` rounds.
      block: steps per timed call (:func:`back_to_back`), as a training loop runs them.
      base: the name of the step the ratios are taken to.
      verbose: print each repeat's medians (a progress line per repeat).

    Returns:
      name -> (median seconds per step over the repeats, median over the repeats of the ratio
      to ``base`` measured in the same repeat).
    """
    calls = {name: carry_runner(*steps[name]) for name in steps}
    if block > 1:
        calls = {name: back_to_back(call, block) for name, call in calls.items()}
    results: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(repeats):
        med = interleaved_medians(calls, rounds=rounds, warmup=3)
        for name in steps:
            results[name].append(med[name] / block)
        if verbose:
            print(
                f"repeat {rep}: "
                + ", ".join(f"{k} {v[-1] * 1e3:.2f} ms" for k, v in results.items())
            )
    return {
        name: (
            float(np.median(ts)),
            float(np.median([t / b for t, b in zip(ts, results[base], strict=True)])),
        )
        for name, ts in results.items()
    }


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
