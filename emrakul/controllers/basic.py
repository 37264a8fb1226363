"""The classic heuristic controllers: dense, one-shot magnitude, SNIP, GMP, SET and RigL.

Each factory returns a :class:`~emrakul.controllers.base.Controller`: a pure ``init``/``decide``
pair whose state (:class:`BasicState`) holds jnp arrays only, so ``decide`` works under ``jit``
and ``vmap`` with a traced step. The observation's ``total_steps`` must be a static Python int
(the schedules compare the step with fractions of it). Every controller prunes each layer to
its entry of ``observation.target`` (uniform or ERK, :mod:`emrakul.surgery.budgets`); the
surgery (:func:`emrakul.surgery.operate.operate`) turns the decisions into masks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree, check_same_structure
from emrakul.controllers import schedules
from emrakul.controllers.base import (
    Controller,
    Decision,
    Observation,
    leaf_scores,
    make_decision,
)
from emrakul.controllers.registry import register
from emrakul.masks.tree import is_pruned
from emrakul.surgery.lifecycle import ALIVE, LYSED


class BasicState(NamedTuple):
    """State of the heuristic controllers.

    Attributes:
      fired: bool scalar; whether the controller has operated: the one-off pruning of
        one-shot and SNIP, the random initial mask of SET and RigL, GMP's first cut.
      calls: int32 scalar; the number of ``decide`` calls so far.
    """

    fired: jax.Array
    calls: jax.Array


def _init(params: PyTree, observation: Observation | None = None, key=None) -> BasicState:
    del params, observation, key
    return BasicState(fired=jnp.zeros((), bool), calls=jnp.zeros((), jnp.int32))


def _advance(state: BasicState, fired: jax.Array) -> BasicState:
    return BasicState(fired=state.fired | fired, calls=state.calls + 1)


def _magnitude(obs: Observation) -> PyTree:
    return leaf_scores(obs, jnp.abs, obs.params)


def _random(obs: Observation, key: jax.Array) -> PyTree:
    """Uniform [0, 1) scores on the pruned leaves, from one draw split across the leaves (one
    random-bits kernel however many layers there are)."""
    leaves, treedef = jax.tree.flatten(obs.state)
    sizes = [int(np.size(s)) if is_pruned(s) else 0 for s in leaves]
    flat = jax.random.uniform(key, (sum(sizes),))
    ends = np.cumsum(sizes)
    out = [
        flat[end - n : end].reshape(jnp.shape(s)) if is_pruned(s) else jnp.float32(0.0)
        for s, n, end in zip(leaves, sizes, ends, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def _where(cond: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def current_sparsity(obs: Observation) -> jax.Array:
    """float32 [num_layers]: the fraction of each pruned layer that is not ALIVE."""
    out = [
        jnp.mean(s != ALIVE, dtype=jnp.float32) for s in jax.tree.leaves(obs.state) if is_pruned(s)
    ]
    return jnp.asarray(out, jnp.float32).reshape((len(out),))


def _target(obs: Observation) -> jax.Array:
    """The per-layer target, after checking the observation's trees and shapes."""
    check_same_structure(obs.state, obs.params, "observation.state", "observation.params")
    check_same_structure(obs.state, obs.grads, "observation.state", "observation.grads")
    target = jnp.asarray(obs.target, jnp.float32)
    num = len(obs.layer_size)
    if target.shape != (num,):
        raise ValueError(
            f"observation.target must have shape ({num},) (one sparsity per pruned layer), "
            f"got {target.shape}"
        )
    return target


def _check_fraction(name: str, value: float, upper: float = 1.0) -> None:
    if not isinstance(value, jax.core.Tracer) and not 0.0 <= float(value) <= upper:
        raise ValueError(f"{name} must lie in [0, {upper}], got {name}={value}")


def _decision(obs, sparsity, churn, drop, grow, operate) -> Decision:
    return make_decision(len(obs.layer_size), sparsity, churn, drop, grow, operate)


@register("dense")
def dense() -> Controller:
    """The dense baseline: never operates (the reference every pruned run is compared with)."""

    def decide(obs: Observation, state: BasicState):
        _target(obs)  # validates the observation
        zeros = leaf_scores(obs, jnp.zeros_like, obs.params)
        decision = _decision(obs, current_sparsity(obs), 0.0, zeros, zeros, False)
        return decision, _advance(state, jnp.zeros((), bool))

    return Controller(name="dense", init=_init, decide=decide)


@register("one_shot")
def one_shot(at: float = 0.5) -> Controller:
    """One-shot magnitude pruning (Han et al. 2015, "Learning both Weights and Connections for
    Efficient Neural Networks"): at the first surgery with ``step >= at * total_steps`` the
    smallest ``|theta|`` of every layer are lysed, down to the layer's target sparsity.
    """
    _check_fraction("at", at)

    def decide(obs: Observation, state: BasicState):
        target = _target(obs)
        fire = (obs.step >= at * obs.total_steps) & ~state.fired
        mag = _magnitude(obs)
        decision = _decision(obs, target, 0.0, mag, mag, fire)
        return decision, _advance(state, fire)

    return Controller(name="one_shot", init=_init, decide=decide)


@register("snip")
def snip() -> Controller:
    """SNIP (Lee, Ajanthan & Torr 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity"): at the first surgery, the weights with the smallest connection sensitivity
    ``|theta * grad|`` are lysed, down to the target, and the sparse network is then trained.

    The caller guarantees that this first surgery happens at step 0 and that
    ``observation.grads`` is the gradient of the loss at initialisation (on one batch).
    """

    def decide(obs: Observation, state: BasicState):
        target = _target(obs)
        fire = ~state.fired
        saliency = leaf_scores(obs, lambda w, g: jnp.abs(w * g), obs.params, obs.grads)
        decision = _decision(obs, target, 0.0, saliency, saliency, fire)
        return decision, _advance(state, fire)

    return Controller(name="snip", init=_init, decide=decide)


@register("gmp")
def gmp(start: float = 0.2, end: float = 0.8) -> Controller:
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): at every
    surgery with ``step >= start * T`` the smallest ``|theta|`` are lysed to reach the cubic
    schedule ``s_t = s_f * (1 - (1 - p)^3)`` (:func:`~emrakul.controllers.schedules.cubic`),
    which rises from 0 at ``start * T`` to the target ``s_f`` at ``end * T`` and stays there.
    """
    _check_fraction("start", start)
    _check_fraction("end", end)
    if end < start:
        raise ValueError(f"gmp needs start <= end, got start={start}, end={end}")

    def decide(obs: Observation, state: BasicState):
        target = _target(obs)
        go = obs.step >= start * obs.total_steps
        sparsity = schedules.cubic(obs.step, obs.total_steps, target, start, end)
        mag = _magnitude(obs)
        return _decision(obs, sparsity, 0.0, mag, mag, go), _advance(state, go)

    return Controller(name="gmp", init=_init, decide=decide)


def _dynamic_sparse(name: str, end: float, churn_fn, grow_fn) -> Controller:
    """SET/RigL skeleton: a random mask at the target at the first surgery, then (before
    ``end * T``) drop ``churn`` of the alive weights by magnitude and regrow as many by
    ``grow_fn``; regrown lysed weights restart at zero."""
    _check_fraction("end", end)

    def decide(obs: Observation, state: BasicState):
        target = _target(obs)
        first = ~state.fired
        k_init, k_grow = jax.random.split(obs.key)
        drop = _where(first, _random(obs, k_init), _magnitude(obs))
        churn = jnp.where(first, 0.0, churn_fn(obs))
        go = first | (obs.step < end * obs.total_steps)
        decision = _decision(obs, target, churn, drop, grow_fn(obs, k_grow), go)
        return decision, _advance(state, first)

    return Controller(name=name, init=_init, decide=decide, drop_to=LYSED, regrow_lysed=True)


@register("set")
def set_(zeta: float = 0.3, end: float = 0.75) -> Controller:
    """Sparse Evolutionary Training (Mocanu et al. 2018, "Scalable training of artificial neural
    networks with adaptive sparse connectivity inspired by network science"): a random sparse
    mask at the target at the first surgery (step 0); then, at every surgery before
    ``end * T``, the fraction ``zeta`` of the alive weights with the smallest ``|theta|`` is
    removed and as many connections are regrown at random.
    """
    _check_fraction("zeta", zeta)
    return _dynamic_sparse("set", end, lambda obs: zeta, lambda obs, key: _random(obs, key))


@register("rigl")
def rigl(alpha: float = 0.3, end: float = 0.75) -> Controller:
    """RigL (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners"): a random
    sparse mask at the target at the first surgery (step 0); then, at every surgery before
    ``end * T``, the fraction ``alpha / 2 * (1 + cos(pi * t / (end * T)))``
    (:func:`~emrakul.controllers.schedules.cosine_decay`) of the alive weights with the
    smallest ``|theta|`` is removed and as many are regrown where the dense gradient ``|grad|``
    is largest (regrown weights start at zero).
    """
    _check_fraction("alpha", alpha)

    def churn(obs: Observation) -> jax.Array:
        return schedules.cosine_decay(obs.step, obs.total_steps, alpha, end)

    def grow(obs: Observation, key: jax.Array) -> PyTree:
        del key
        return leaf_scores(obs, jnp.abs, obs.grads)

    return _dynamic_sparse("rigl", end, churn, grow)
