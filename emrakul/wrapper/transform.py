"""The factory :func:`wrap`: an optax transformation over one frozen :class:`WrapSettings`.

``wrap`` validates its arguments, builds the settings and returns
``optax.GradientTransformationExtraArgs(partial(init_state, settings),
partial(update_state, settings))``, like an optax factory closing over its hyperparameters,
except that the closure is a frozen, hashable value and the functions are module-level.
"""

from __future__ import annotations

import functools

import optax

from emrakul._tree import Filter
from emrakul.controllers.base import Controller
from emrakul.masks.structures import Unstructured
from emrakul.wrapper.initialize import init_state
from emrakul.wrapper.settings import VITALS_EVERY, StructureChoice, WrapSettings
from emrakul.wrapper.update import update_state


def transformation(settings: WrapSettings) -> optax.GradientTransformationExtraArgs:
    """The optax transformation of ``settings``: ``init_state`` and ``update_state`` bound."""
    return optax.GradientTransformationExtraArgs(
        functools.partial(init_state, settings), functools.partial(update_state, settings)
    )


def wrap(
    inner: optax.GradientTransformation,
    controller: Controller,
    *,
    total_steps: int,
    sparsity: float = 0.9,
    distribution: str = "uniform",
    structure: StructureChoice = Unstructured(),  # noqa: B008
    filter: Filter | None = None,
    every: int = 100,
    cooldown: int = 0,
    anesthesia_threshold: float = 1.0,
    anesthesia_depth: float = 1.0,
    anesthesia_recovery: float = 0.01,
    vitals_decay: float = 0.99,
    vitals_every: int = VITALS_EVERY,
    compact_vitals: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that ``controller`` prunes the model while it trains.

    Args:
      inner: any optax gradient transformation (Adam, SGD, chains, ``inject_hyperparams``...).
      controller: an :class:`emrakul.controllers.base.Controller` (``emrakul.controllers``).
      total_steps: host steps of the whole run (schedules are fractions of it).
      sparsity: the final target sparsity over the pruned leaves, in ``[0, 1)``.
      distribution: ``"uniform"`` (every layer at ``sparsity``) or ``"erk"``
        (Erdos-Renyi-Kernel, Evci et al. 2020).
      structure: ``Unstructured()``, ``NM(n, m, axis)``, ``Units(axis)`` or a function
        ``(path, leaf) -> structure`` choosing per leaf.
      filter: ``(path, leaf) -> bool`` choosing the pruned leaves; default: floating leaves with
        ``ndim >= 2`` (Dense/Conv kernels), biases and norms are left alone.
      every: host steps between surgeries (automatic mode).
      cooldown: host steps a weight must wait after changing state (flip-flop damping).
      anesthesia_threshold: cut fraction that triggers anesthesia of a layer (1 = never).
      anesthesia_depth: learning-rate multiplier right after such a cut.
      anesthesia_recovery: per-step recovery rate of the multiplier.
      vitals_decay: EMA decay of the vital signs (only kept if the controller needs them),
        applied per update.
      vitals_every: host steps between updates of the vital signs (1: every step), skipped with
        a ``lax.cond`` (``python -m benchmarks.step_overhead`` measures what it saves); the
        dormancy age then counts updates.
      compact_vitals: keep bfloat16 EMAs and a ``uint8`` age
        (:data:`emrakul.vitals.COMPACT_STATISTICS`, 8 bytes per parameter instead of 15).
      seed: seed of the wrapper's own randomness (random masks, gates).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` accepts the extra keywords
      ``surgery`` (``None``: automatic; ``True``/``False``: force or skip, static), ``value``
      (this step's loss, tracked as EMAs for the learned controller), ``val_accuracy`` (the
      latest validation accuracy, kept until the next one) and ``activations`` (per-unit
      statistics for this step's surgery: the dict of :func:`emrakul.vitals.activation_stats`
      or a tree from :func:`emrakul.vitals.activation_tree`). Other extra arguments are
      ignored, as optax does.

    Raises:
      ValueError / TypeError: bad arguments, named. ``wrap`` checks what it can without the
      parameters; ``tx.init`` checks the rest (the filter's choice, every structure against its
      leaf, the budgets) before anything is traced, naming the leaf by its path.
    """
    settings = WrapSettings(
        inner=inner,
        controller=controller,
        total_steps=total_steps,
        sparsity=sparsity,
        distribution=distribution,
        structure=structure,
        filter=filter,
        every=every,
        cooldown=cooldown,
        anesthesia_threshold=anesthesia_threshold,
        anesthesia_depth=anesthesia_depth,
        anesthesia_recovery=anesthesia_recovery,
        vitals_decay=vitals_decay,
        vitals_every=vitals_every,
        compact_vitals=compact_vitals,
        seed=seed,
    )
    return transformation(settings)
