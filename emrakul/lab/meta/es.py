"""Evolution strategies over whatever a controller reads from its state: plans or policies.

OpenAI-ES (Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative to
Reinforcement Learning"), from evosax (Lange 2022), with antithetic pairs and centred ranks. A
*genome* is a pytree that :func:`write` puts into a host's controller state before it trains (a
:class:`~emrakul.controllers.plan_space.SurgeryPlan` for the open-loop ceiling, the Magistrate's
policy parameters for meta-training). The fitness of every genome of a generation is measured
on the same host seeds (common random numbers: every genome trains hosts with the same
initialisations and data order), as the mean validation accuracy at the end of training, all
candidates and seeds (and host groups) in one compiled program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from emrakul.lab.loop import RunState, Trainer

Genome = Any
Write = Callable[[RunState, Genome], RunState]


class HostGroup(NamedTuple):
    """Hosts of one shape trained with genomes: a classifier trainer and how a genome enters it.

    Attributes:
      trainer: the host's :class:`~emrakul.lab.loop.Trainer` (its controller reads the genome).
      write: ``write(run_state, genome) -> run_state``.
      name: a label for logs.
      score: optional ``score(state, metrics) -> Scores`` of a finished run (a stream's
        last-tasks accuracy); ``None``: the final validation and test evaluation.
    """

    trainer: Trainer
    write: Write
    name: str = ""
    score: Callable[[Any, Any], Any] | None = None


class Scores(NamedTuple):
    """What one host run scores, ``[candidates, seeds]`` per group when batched."""

    val_accuracy: jax.Array
    val_loss: jax.Array
    test_accuracy: jax.Array
    sparsity: jax.Array


def _train_one(group: HostGroup, genome: Genome, key: jax.Array) -> Scores:
    trainer = group.trainer
    state = group.write(trainer.init(key), genome)
    state, metrics = trainer.run(state, trainer.num_intervals)
    if group.score is not None:
        return group.score(state, metrics)
    val = trainer.evaluate(state, "val")
    test = trainer.evaluate(state, "test")
    return Scores(val["accuracy"], val["loss"], test["accuracy"], metrics.sparsity[-1])


def population_scores(
    groups: Sequence[HostGroup], genomes: Genome, keys: jax.Array
) -> tuple[Scores, ...]:
    """Every genome (leading axis ``P``) on every host seed (``keys [S]``) of every group.

    Returns one :class:`Scores` of ``[P, S]`` arrays per group (same seeds for all genomes).
    """
    out = []
    for g in groups:
        one = functools.partial(_train_one, g)
        over_seeds = jax.vmap(one, in_axes=(None, 0))
        out.append(jax.vmap(over_seeds, in_axes=(0, None))(genomes, keys))
    return tuple(out)


def fitness(scores: Sequence[Scores]) -> jax.Array:
    """``[P]``: mean validation accuracy over seeds and groups (higher is better)."""
    return jnp.mean(jnp.stack([s.val_accuracy.mean(axis=1) for s in scores]), axis=0)


def scores_fn(groups: Sequence[HostGroup]) -> Callable[[Genome, jax.Array], tuple[Scores, ...]]:
    """The jitted :func:`population_scores` of ``groups``."""
    return jax.jit(functools.partial(population_scores, tuple(groups)))
