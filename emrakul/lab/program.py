"""The one shape every host program has: ``init``, ``run`` a chunk of surgery intervals, metrics.

A host (the MNIST-1D classifier, the DQN, the PPO agent) is compiled as one pure program in the
style of PureJaxRL's ``make_train`` (Lu et al. 2022, "Discovered Policy Optimisation"): all it
carries is one pytree state, and ``run(state, k)`` is a ``lax.scan`` over ``k`` surgery
intervals that returns the state after them and one metrics row per interval. A
:class:`Program` is that pair plus what a driver needs to run it in chunks without knowing the
host: the number of intervals, the metrics type, the field whose finiteness says the run is
healthy, a one-line summary of a chunk's metrics, and the final evaluation of a state. The
driver (:mod:`emrakul.lab.driver`) lifts ``init``, ``run`` and ``final`` over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

State = Any
Metrics = Any


class Program(NamedTuple):
    """A compiled host program, for one seed.

    Attributes:
      init: ``init(key) -> state``, the state before the first interval.
      run: ``run(state, num_intervals) -> (state, metrics)``; ``num_intervals`` is static and
        every metrics leaf has a leading axis of that length (one row per surgery interval).
      num_intervals: the surgery intervals of a whole run.
      metrics_type: the metrics ``NamedTuple`` that ``run`` returns (fields a run does not
        measure may be ``None``).
      loss_field: the metrics field that must stay finite (the driver stops the run otherwise).
      loss_name: how that loss is called in the error message (``"training loss"``).
      remedy: what the error message suggests (``"Lower train.lr or check the data."``).
      final: ``final(state) -> dict`` of arrays, the evaluation at the end of a run.
      describe: ``describe(metrics) -> str``, the program's fields of a progress line, given a
        chunk's metrics as numpy arrays with leading ``[seeds, intervals]`` axes.
      lysis: how the program compacts itself between chunks (:class:`Lysis`), or ``None``.
    """

    init: Callable[[jax.Array], State]
    run: Callable[[State, int], tuple[State, Metrics]]
    num_intervals: int
    metrics_type: type
    loss_field: str
    loss_name: str
    remedy: str
    final: Callable[[State], dict[str, jax.Array]]
    describe: Callable[[Metrics], str]
    lysis: Lysis | None = None


class Lysis(NamedTuple):
    """How a program removes lysed units between chunks and is rebuilt on resume (issue 19).

    Attributes:
      every: try after every this many chunks (counted from the run's start).
      lyse: ``lyse(state) -> (program, state, record)`` given every seed's state (leading seeds
        axis, on the host), or ``None`` when nothing is removed: the smaller program, its state,
        and a JSON-able record of what was removed so far.
      rebuild: ``rebuild(record) -> program``, the smaller program again from a record (a
        resumed run restores the checkpoints written after a lysis into it).
    """

    every: int
    lyse: Callable[[State], tuple[Program, State, dict] | None]
    rebuild: Callable[[dict], Program]


def check_program(program: Program) -> None:
    """Raises ``ValueError`` when ``program`` cannot be driven (the message names the field)."""
    if not isinstance(program, Program):
        raise TypeError(f"expected an emrakul.lab.program.Program, got {type(program).__name__}")
    n = program.num_intervals
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"Program.num_intervals must be a positive int, got {n!r}")
    fields = getattr(program.metrics_type, "_fields", ())
    if program.loss_field not in fields:
        raise ValueError(
            f"Program.loss_field={program.loss_field!r} is not a field of "
            f"{getattr(program.metrics_type, '__name__', program.metrics_type)} {fields}"
        )
