"""The one interface every controller implements, heuristic or learned.

A controller is a pair of pure functions (optax-style): ``init`` makes its state, ``decide``
maps an :class:`Observation` of the training run to a :class:`Decision` and a new state. The
surgery (:func:`emrakul.surgery.operate`) turns a decision into masks and lifecycle changes, so
controllers never touch masks, optimizer states or structures themselves.

Gate controllers (L0 hard-concrete, variational Bernoulli unit gates) additionally provide
``gates`` (the float multipliers used in the forward pass) and ``learn`` (a gradient step on
their gate parameters from the straight-through gradient); the wrapper calls them every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.masks.tree import is_pruned
from emrakul.surgery.lifecycle import LYSED


class Observation(NamedTuple):
    """What a controller sees at a surgery time.

    Attributes:
      step: int32 scalar, the host step (0 before the first update).
      total_steps: static int, the host steps of the whole run.
      params: the dense weights theta (sedated weights hold their learned values, lysed 0).
      grads: the dense straight-through gradient of the last step (zeros before the first).
      state: the lifecycle tree (int8 ALIVE/SEDATED/LYSED; scalar markers where not pruned).
      vitals: the :class:`emrakul.vitals.VitalsState` (``None`` if the controller does not
        declare ``needs_vitals``).
      layer_size: static tuple of ints, the number of weights of each pruned layer.
      target: float32 [num_layers], the per-layer target sparsity of the run (from the budget
        distribution, uniform or ERK).
      key: a PRNG key for this decision.
      activations: optional per-unit activation statistics: a tree with the params' structure
        holding, for each pruned kernel, the ReDo dormant score (Sokar et al. 2023) of its
        output units (float32 ``[units]``, the kernel's last axis) and a scalar ``0.0`` where
        nothing was measured; ``None`` when the training loop passed none (see
        :func:`emrakul.vitals.activation_tree`).
      health: optional float32 ``[3]``: the training loss (an EMA), its relative slope
        ``(fast EMA - slow EMA) / slow EMA`` and the last validation accuracy the loop reported
        (0 if none); ``None`` when not tracked.
      interval: optional int32, the host steps between surgeries (so a controller can tell its
        last surgery, ``step + interval >= total_steps``); ``None`` when unknown.
    """

    step: jax.Array
    total_steps: int
    params: PyTree
    grads: PyTree
    state: PyTree
    vitals: Any
    layer_size: tuple
    target: jax.Array
    key: jax.Array
    activations: Any = None
    health: jax.Array | None = None
    interval: jax.Array | None = None


class Decision(NamedTuple):
    """What the surgery should do (all fields traced, per pruned layer where arrays).

    For each pruned layer with ``n`` weights, the surgery keeps ``n - round(sparsity * n)``
    weights ALIVE: first the best ``drop_score`` among the currently alive ones (minus
    ``churn`` of them), then the best ``grow_score`` among the others that may (re)enter
    (sedated ones, and lysed ones where the controller allows regrowth). Structured layers
    (N:M, units) select in one stage by ``drop_score``.

    Attributes:
      sparsity: float32 [num_layers], the sparsity each layer should have after the surgery.
      churn: float32 [num_layers], the fraction of alive weights to swap out and regrow
        (RigL's / SET's drop fraction); 0 for monotone pruning.
      drop_score: a tree with the params' structure, higher = more worth keeping; pruned leaves
        hold arrays of the param's shape, the others a scalar ``0.0`` placeholder (never read).
      grow_score: the same layout, higher = regrow / wake first.
      operate: bool scalar; False leaves masks and lifecycle untouched.
      lyse: optional bool tree with the params' structure (scalar placeholders where not
        pruned): weights marked here that leave ALIVE become LYSED whatever ``drop_to`` says,
        and marked SEDATED weights that stay out of ALIVE are lysed too (the learned
        controller's per-region "lyse" decision). ``None``: only ``drop_to`` applies.
      rewrite: optional :class:`~emrakul.surgery.rewrite.Rewrite` of the weights themselves
        (re-initialisation, shrinking, noise: the plasticity remedies), applied after the mask
        changes whether or not ``operate`` is set. ``None``: the weights are not rewritten.
    """

    sparsity: jax.Array
    churn: jax.Array
    drop_score: PyTree
    grow_score: PyTree
    operate: jax.Array
    lyse: PyTree | None = None
    rewrite: Any = None


class Controller(NamedTuple):
    """A pruning controller.

    Attributes:
      name: a short name (used in configs and tables).
      init: ``(params, observation, key) -> controller_state``.
      decide: ``(observation, controller_state) -> (Decision, controller_state)``.
      drop_to: static, what weights leaving ALIVE become: ``LYSED`` (default) or ``SEDATED``.
      regrow_lysed: static, whether lysed weights may be regrown (RigL, SET, DSD).
      needs_vitals: static, whether the wrapper must keep vital signs for this controller.
      needs_activations: static, whether the training loop should measure per-unit activation
        statistics and the validation accuracy before each surgery and pass them to
        ``update`` (``activations=``, ``val_accuracy=``); the learned controller reads them.
      gates: optional ``(controller_state, params, key) -> tree`` of float multipliers applied
        in the forward pass on top of the alive mask (gate controllers); ``None`` otherwise.
      learn: optional ``(controller_state, params, grads, key, step) -> controller_state``:
        one gradient step on the gate parameters from the straight-through gradient ``grads``
        (d loss / d effective weight); ``None`` otherwise.
      penalty: optional ``(controller_state) -> scalar``, the regulariser the gates add to the
        loss, weight included (for logging; ``learn`` already includes its gradient).

    ``Observation`` carries static Python values (``total_steps``, ``layer_size``), so build it
    inside the traced function rather than passing it as a ``jit`` argument (the wrapper does).
    """

    name: str
    init: Callable[..., Any]
    decide: Callable[..., tuple[Decision, Any]]
    drop_to: int = LYSED
    regrow_lysed: bool = False
    needs_vitals: bool = False
    gates: Callable[..., PyTree] | None = None
    learn: Callable[..., Any] | None = None
    penalty: Callable[..., jax.Array] | None = None
    needs_activations: bool = False


def leaf_scores(obs: Observation, fn: Callable[..., jax.Array], *trees: PyTree) -> PyTree:
    """``fn(*leaves)`` as float32 on the pruned leaves; the scalar ``0.0`` placeholder elsewhere."""
    return jax.tree.map(
        lambda s, *xs: jnp.asarray(fn(*xs), jnp.float32) if is_pruned(s) else jnp.float32(0.0),
        obs.state,
        *trees,
    )


def state_scores(obs: Observation, fn: Callable[..., jax.Array], *trees: PyTree) -> PyTree:
    """``fn(state, *leaves)`` as float32 on the pruned leaves (``state`` the lifecycle leaf);
    the scalar ``0.0`` placeholder elsewhere."""
    return leaf_scores(obs, fn, obs.state, *trees)


def make_decision(
    num_layers: int, sparsity, churn, drop: PyTree, grow: PyTree, operate
) -> Decision:
    """A :class:`Decision`, broadcasting scalar ``sparsity`` / ``churn`` to every layer."""
    return Decision(
        sparsity=jnp.broadcast_to(jnp.asarray(sparsity, jnp.float32), (num_layers,)),
        churn=jnp.broadcast_to(jnp.asarray(churn, jnp.float32), (num_layers,)),
        drop_score=drop,
        grow_score=grow,
        operate=jnp.asarray(operate, bool),
    )
