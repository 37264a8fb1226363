"""Meta-training the Magistrate on non-stationary streams (the setting of issue 18).

A host group here is a stream program (:mod:`emrakul.lab.stream_loop`) of one MLP shape, run by
the Magistrate in a stream's plan space (:data:`STREAM_SPACE`: prune over the first tenth, keep
swapping after it, never lyse, so sedated weights stay wakeable at a task switch). A run's
score is the mean validation accuracy over the last ``window`` tasks (the held-out examples of
each task at its end, as the plasticity table measures it), so a policy is rewarded for a small
network that keeps learning late in the stream. Every genome trains the same host seeds and
streams (common random numbers), as :mod:`emrakul.lab.meta.es` does for classifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections

from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.magistrate import policy_controller
from emrakul.controllers.plan_space import PlanSpace
from emrakul.controllers.with_remedy import with_remedy
from emrakul.lab import stream_loop as sl
from emrakul.lab.build import make_controller
from emrakul.lab.meta.es import HostGroup, Scores
from emrakul.lab.meta.es_train import write_params
from emrakul.lab.sweeps import stream as stream_sweep

#: The plan space the stream policy acts in (its neutral action: breathing over the first tenth
#: of the stream, then swapping 5% per surgery forever, nothing lysed).
STREAM_SPACE = PlanSpace.breathing(start=0.0, end=0.1, lyse_at_end=False, churn_after_end=True)


class StreamTrainer(NamedTuple):
    """The parts of a stream program :mod:`emrakul.lab.meta.es` drives (``init``, ``run``,
    ``num_intervals``: the tasks)."""

    init: Any
    run: Any
    num_intervals: int


def last_tasks_score(window: int):
    """``score(state, metrics)``: the mean validation / test accuracy over the last ``window``
    tasks, the mean validation loss 0 (not measured per task) and the final sparsity."""

    def score(state: sl.StreamState, metrics: sl.TaskMetrics) -> Scores:
        del state
        val = metrics.val_accuracy[-window:].mean()
        return Scores(val, 0.0 * val, metrics.test_accuracy[-window:].mean(),
                      metrics.sparsity[-1])  # fmt: skip

    return score


def stream_groups(
    config: ml_collections.ConfigDict,
    widths: Sequence[tuple[int, ...]],
    network: PlanNetwork,
    params: Any,
    space: PlanSpace = STREAM_SPACE,
    window: int = 10,
    remedy: str = "",
) -> list[HostGroup]:
    """One host group per MLP shape in ``widths``, on ``config``'s stream, run by the Magistrate
    (with the plasticity remedy ``remedy``, e.g. ``"continual_backprop"``, when given: its
    settings from ``config.controllers``).

    Raises:
      ValueError: an invalid stream config (naming the field), or a window longer than the
        stream.
    """
    stream = stream_sweep.check_config(config, [])
    if not 1 <= window <= stream.num_tasks:
        raise ValueError(f"window must lie in [1, {stream.num_tasks}] tasks, got {window}")
    controller = policy_controller(space, params, network)
    if remedy:
        controller = with_remedy(controller, make_controller(remedy, config.get("controllers")))
    groups = []
    for w in widths:
        c = config.copy_and_resolve_references()
        c.host.width = tuple(w)
        setup = stream_sweep.make_setup(c, controller)
        program = sl.make_program(setup)
        trainer = StreamTrainer(program.init, program.run, program.num_intervals)
        name = ",".join(map(str, w))
        groups.append(HostGroup(trainer, write_params, name, last_tasks_score(window)))
    return groups
