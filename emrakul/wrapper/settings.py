"""The static description of one wrapped optimizer: :class:`WrapSettings`.

Everything :func:`emrakul.wrap` is told that does not change during a run (the inner optimizer,
the controller, the budget, the structure, the filter, the schedule) is held in one frozen,
hashable dataclass. ``init`` and ``update`` are module-level pure functions of it
(``functools.partial(init_state, settings)``), in the style of optax's factories that close over
their hyperparameters; the values a run may change while it trains are copied into the traced
:class:`~emrakul.wrapper.state.Knobs` instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

from emrakul import vitals as vit
from emrakul._tree import Filter
from emrakul.controllers.base import Controller
from emrakul.masks.structures import Structure, Unstructured, check_structure
from emrakul.surgery.budgets import check_budget

VITALS_EVERY = 1
"""The default period of the vital signs' update (``wrap(..., vitals_every=...)``): every step.
A period of 10 neither met the speed target (1.12x a dense step, ``python -m
benchmarks.step_overhead``) nor kept GSNR's decisions (-0.06 test accuracy, ``python -m
benchmarks.vitals_period_decisions``; BUILD_NOTES.md, "Train-step overhead"), so it is opt-in."""

StructureChoice = Structure | Callable[[tuple, Any], Structure]
"""A structure for every pruned leaf, or a ``(path, leaf) -> structure`` choosing per leaf."""


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        try:
            as_int = int(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be an int, got {value!r}") from e
        if as_int != value:
            raise TypeError(f"{name} must be an int, got {value!r}")
        return as_int
    return int(value)


@dataclasses.dataclass(frozen=True)
class WrapSettings:
    """The static settings of a wrapped optimizer (see :func:`emrakul.wrap` for each field).

    Constructing one validates every field that can be checked without the parameters; the
    checks that need the parameters (filter, structures, budgets) run in ``init``.

    Attributes:
      inner: the inner optax transformation.
      controller: the :class:`~emrakul.controllers.base.Controller`.
      total_steps: host steps of the whole run.
      sparsity: the final global target sparsity over the pruned leaves, in ``[0, 1)``.
      distribution: ``"uniform"`` or ``"erk"``.
      structure: a structure, or a ``(path, leaf) -> structure`` callable.
      filter: ``(path, leaf) -> bool`` choosing the pruned leaves, or ``None`` (the default).
      every: host steps between surgeries in automatic mode.
      cooldown: host steps a weight waits after a state change.
      anesthesia_threshold: cut fraction that anesthetises a layer.
      anesthesia_depth: learning-rate multiplier right after such a cut.
      anesthesia_recovery: per-step recovery rate of the multiplier.
      vitals_decay: EMA decay of the vital signs (per update).
      vitals_every: host steps between updates of the vital signs.
      compact_vitals: keep the vital signs in the compact state
        (:data:`~emrakul.vitals.COMPACT_STATISTICS`) instead of full precision.
      seed: seed of the wrapper's own randomness.

    Raises:
      TypeError / ValueError: a field that is invalid on its own, named.
    """

    inner: optax.GradientTransformation
    controller: Controller
    total_steps: int
    sparsity: float = 0.9
    distribution: str = "uniform"
    structure: StructureChoice = Unstructured()  # noqa: RUF009 (immutable NamedTuple)
    filter: Filter | None = None
    every: int = 100
    cooldown: int = 0
    anesthesia_threshold: float = 1.0
    anesthesia_depth: float = 1.0
    anesthesia_recovery: float = 0.01
    vitals_decay: float = 0.99
    vitals_every: int = VITALS_EVERY
    compact_vitals: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.controller, Controller):
            raise TypeError(
                f"controller must be an emrakul Controller, got {type(self.controller)}"
            )
        if not callable(getattr(self.inner, "init", None)) or not callable(
            getattr(self.inner, "update", None)
        ):
            raise TypeError(f"inner must be an optax GradientTransformation, got {self.inner!r}")
        total = self.total_steps
        if not isinstance(total, int | np.integer) or isinstance(total, bool) or total < 1:
            raise ValueError(f"total_steps must be a positive int, got {total!r}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {self.sparsity}")
        check_budget(float(self.sparsity), self.distribution)
        if int(self.every) < 1:
            raise ValueError(f"every must be >= 1 host step, got {self.every}")
        if not isinstance(self.compact_vitals, bool):
            raise TypeError(f"compact_vitals must be a bool, got {self.compact_vitals!r}")
        if int(self.cooldown) < 0:
            raise ValueError(f"cooldown must be >= 0, got {self.cooldown}")
        if not callable(self.structure):
            check_structure(self.structure)
        if self.filter is not None and not callable(self.filter):
            raise TypeError(
                f"filter must be a (path, leaf) -> bool callable or None, got {self.filter!r}"
            )
        self._normalise()

    @property
    def vitals_statistics(self) -> tuple:
        """The statistics table of the vital signs (full precision or compact)."""
        return vit.COMPACT_STATISTICS if self.compact_vitals else vit.STATISTICS

    def _normalise(self) -> None:
        """Stores the numbers as Python ints and floats, so the settings hash."""
        ints = {"total_steps": self.total_steps, "every": self.every, "cooldown": self.cooldown}
        for name, value in {**ints, "vitals_every": self.vitals_every, "seed": self.seed}.items():
            object.__setattr__(self, name, _as_int(value, name))
        if self.vitals_every < 1:
            raise ValueError(f"vitals_every must be >= 1 host step, got {self.vitals_every}")
        floats = (
            "sparsity",
            "anesthesia_threshold",
            "anesthesia_depth",
            "anesthesia_recovery",
            "vitals_decay",
        )
        for name in floats:
            object.__setattr__(self, name, float(getattr(self, name)))
