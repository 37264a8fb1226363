"""Variational Bernoulli gates on output units, with a complexity-aware penalty.

In the spirit of OFEXiNet (Guenter & Sideris 2025), which learns Bernoulli unit gates whose
regulariser is weighted by each unit's computational cost; the gates are drawn with the
straight-through binary Gumbel-softmax estimator (Jang et al. 2017, "Categorical
Reparameterization with Gumbel-Softmax"). They are trained by
:mod:`emrakul.controllers.gate_training` until the final surgery hands over to the mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emrakul._tree import PyTree
from emrakul.controllers import gate_training as gt
from emrakul.controllers.base import Controller, Decision, Observation
from emrakul.controllers.checks import check_number
from emrakul.controllers.registry import register
from emrakul.masks.stochastic import gumbel_softmax_mask
from emrakul.masks.tree import is_pruned
from emrakul.surgery.lifecycle import LYSED


class UnitGateState(NamedTuple):
    """State of :func:`variational_units`.

    Attributes:
      logits: float32 ``[units]`` keep log-odds per pruned leaf (units = the last axis),
        scalar 0 markers elsewhere.
      cost: float32 ``[units]`` per pruned leaf: each unit's weight count (its fan-in, i.e. its
        parameter and multiply-accumulate cost per output position); 0 markers elsewhere.
      opt_state: the optax state of the logit optimizer.
      complexity_weight: float32, the weight of the expected-cost penalty.
      kl_weight: float32, the weight of the KL term (0 disables it).
      temperature: float32, the Gumbel-softmax relaxation temperature.
      finalize_at: int32, the first step at which the mask takes over.
      done: bool, whether the final surgery has happened.
    """

    logits: PyTree
    cost: PyTree
    opt_state: Any
    complexity_weight: jax.Array
    kl_weight: jax.Array
    temperature: jax.Array
    finalize_at: jax.Array
    done: jax.Array


def _units(shape: tuple) -> tuple:
    """Unit gates: one gate parameter per slice of the last axis."""
    return shape[-1:]


def _units_penalty(logits: PyTree, cost: PyTree, cw, kw, prior: float) -> jax.Array:
    """``sum_u c_u (cw * q_u + kw * KL(Bern(q_u) || Bern(prior))) / sum_u c_u``."""
    total, weighted = 0.0, 0.0
    log_p, log_1mp = math.log(prior), math.log1p(-prior)
    for lg, c in zip(jax.tree.leaves(logits), jax.tree.leaves(cost), strict=True):
        if not is_pruned(lg):
            continue
        q = jax.nn.sigmoid(lg)
        log_q, log_1mq = jax.nn.log_sigmoid(lg), jax.nn.log_sigmoid(-lg)
        kl = q * (log_q - log_p) + (1.0 - q) * (log_1mq - log_1mp)
        weighted = weighted + jnp.sum(c * (cw * q + kw * kl))
        total = total + jnp.sum(c)
    return weighted / jnp.maximum(total, 1.0)


def _fan_in(s: jax.Array) -> jax.Array:
    """float32 ``[units]``: every unit's weight count (the product of the other axes)."""
    shape = jnp.shape(s)
    return jnp.full(shape[-1:], np.prod(shape[:-1]), jnp.float32)


def _init(
    params: PyTree,
    observation: Observation,
    key: jax.Array,
    *,
    opt: optax.GradientTransformation,
    hyper: dict[str, float],
) -> UnitGateState:
    finalize_at = gt.finalize_step(observation, hyper["finalize"])
    logits = gt.init_gate_params(observation, params, key, _units, hyper["init_logit"])
    cost = jax.tree.map(
        lambda s: _fan_in(s) if is_pruned(s) else jnp.float32(0.0), observation.state
    )
    return UnitGateState(
        logits=logits,
        cost=cost,
        opt_state=opt.init(logits),
        complexity_weight=jnp.float32(hyper["complexity_weight"]),
        kl_weight=jnp.float32(hyper["kl_weight"]),
        temperature=jnp.float32(hyper["temperature"]),
        finalize_at=finalize_at,
        done=jnp.zeros((), bool),
    )


def _sample(state: UnitGateState) -> Callable[[jax.Array, jax.Array], jax.Array]:
    return lambda k, lg: gumbel_softmax_mask(k, lg, state.temperature)


def _pen(logits: PyTree, state: UnitGateState, *, prior: float) -> jax.Array:
    cw, kw = state.complexity_weight, state.kl_weight
    return _units_penalty(logits, state.cost, cw, kw, prior)


def _gates(state: UnitGateState, params: PyTree, key: jax.Array) -> PyTree:
    gt.check_gate_params(params, state.logits, "logits", _units)
    return gt.forward_gates(_sample(state), state.logits, params, key, state.done)


def _penalty(state: UnitGateState, *, prior: float) -> jax.Array:
    return jnp.where(state.done, 0.0, _pen(state.logits, state, prior=prior))


def _per_unit(x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(-1, x.shape[-1]), axis=0)


def _learn(
    state: UnitGateState,
    params,
    grads,
    key: jax.Array,
    step,
    *,
    opt: optax.GradientTransformation,
    prior: float,
) -> UnitGateState:
    gt.check_gate_params(params, state.logits, "logits", _units)
    gt.check_gate_params(grads, state.logits, "logits", _units, "grads")
    task = gt.chain_gradient(_sample(state), state.logits, params, grads, key, _per_unit)
    pen = jax.grad(functools.partial(_pen, prior=prior))(state.logits, state)
    grad = jax.tree.map(jnp.add, task, pen)
    active = ~state.done & (jnp.asarray(step) < state.finalize_at)
    logits, opt_state = gt.learn_step(opt, state.logits, state.opt_state, grad, active)
    return state._replace(logits=logits, opt_state=opt_state)


def _drop_score(lg: jax.Array, p: jax.Array) -> jax.Array:
    if not is_pruned(lg):
        return jnp.float32(0.0)
    mag = jnp.abs(jnp.asarray(p, jnp.float32)) + 1e-8
    return jax.nn.sigmoid(lg) * mag


def _decide(obs: Observation, state: UnitGateState) -> tuple[Decision, UnitGateState]:
    num = gt.check_gate_observation(obs, state.logits, "logits")
    gt.check_gate_params(obs.params, state.logits, "logits", _units)
    drop = jax.tree.map(_drop_score, state.logits, obs.params)
    go = (jnp.asarray(obs.step) >= state.finalize_at) & ~state.done
    decision = gt.final_decision(num, obs, drop, go)
    return decision, state._replace(done=state.done | go)


def _checked(
    complexity_weight, temperature, finalize, init_logit, kl_weight, prior
) -> tuple[dict[str, float], float]:
    """The validated hyperparameters of :func:`variational_units` (and its ``prior``).

    Raises:
      ValueError: a hyperparameter out of range, named.
    """
    hyper = {
        "complexity_weight": check_number(
            "complexity_weight", complexity_weight, low=0, low_open=False
        ),
        "temperature": check_number("temperature", temperature, low=0.0, low_open=True),
        "finalize": check_number("finalize", finalize, low=0.0, low_open=True, high=1.0),
        "init_logit": check_number("init_logit", init_logit, low=-math.inf, low_open=True),
        "kl_weight": check_number("kl_weight", kl_weight, low=0.0, low_open=False),
    }
    prior = check_number("prior", prior, low=0.0, low_open=True, high=1.0)
    if prior >= 1.0:
        raise ValueError(f"prior must lie in (0, 1), got prior={prior}")
    return hyper, prior


@register("variational")
def variational_units(
    complexity_weight: float = 0.1,
    lr: float = 1e-2,
    temperature: float = 0.5,
    finalize: float = 0.8,
    init_logit: float = 3.0,
    kl_weight: float = 0.0,
    prior: float = 0.5,
    optimizer: optax.GradientTransformation | None = None,
) -> Controller:
    """Variational Bernoulli gates on output units with a complexity-aware penalty, in the
    spirit of OFEXiNet (Guenter & Sideris 2025), which learns Bernoulli unit gates whose
    regulariser is weighted by each unit's computational cost.

    Every output unit ``u`` (last axis) of every pruned leaf has a keep logit ``l_u``; its gate
    ``z_u ~ Bernoulli(sigmoid(l_u))`` is drawn with the straight-through binary Gumbel-softmax
    estimator (:func:`emrakul.masks.gumbel_softmax_mask`: hard 0/1 forward, relaxed gradient
    at ``temperature``) and multiplies all the unit's weights. The penalty is

        ``sum_u c_u * (complexity_weight * q_u + kl_weight * KL(Bern(q_u) || Bern(prior)))
        / sum_u c_u``,

    ``q_u = sigmoid(l_u)`` and ``c_u`` the unit's weight count (its fan-in: the parameters and
    FLOPs the unit costs), i.e. the expected fraction of the layer cost that stays switched on.
    The optional KL term (off by default) is the variational regulariser towards a Bernoulli
    prior; it is weighted by cost too. ``learn`` pulls ``d loss / d z_u = sum over the unit's
    weights of grads * theta`` back through the relaxed sample drawn with the same key, adds
    the penalty's gradient and takes an optimizer step on the logits. At the first surgery
    with ``step >= finalize * T`` every layer is pruned once to its target (LYSED) by
    ``drop_score = sigmoid(l_u) * (|theta| + 1e-8)`` broadcast over the unit: an unstructured
    selection reaches the target exactly (weights of likely-kept units, by magnitude within),
    a ``Units`` structure ranks whole units by ``q_u * sum |theta|``.

    Args:
      complexity_weight: weight of the expected-cost fraction (``>= 0``, traced).
      lr: learning rate of the default Adam optimizer (traced).
      temperature: relaxation temperature (``> 0``, traced).
      finalize: fraction of training at which the mask takes over, in (0, 1].
      init_logit: initial keep log-odds (3: keep probability 0.95), plus ``0.01 * N(0, 1)``.
      kl_weight: weight of the KL term (``>= 0``, traced).
      prior: keep probability of the Bernoulli prior of the KL term, in (0, 1) (static).
      optimizer: optional optax transformation for the logits instead of Adam(``lr``).

    Returns:
      A controller with ``gates``, ``learn`` and ``penalty`` (0 after finalisation).

    Raises:
      ValueError / TypeError: bad hyperparameters, named.
    """
    hyper, prior = _checked(complexity_weight, temperature, finalize, init_logit, kl_weight, prior)
    opt = gt.gate_optimizer(lr, optimizer)

    def init(params: PyTree, observation: Observation, key: jax.Array) -> UnitGateState:
        return _init(params, observation, key, opt=opt, hyper=hyper)

    def penalty(state: UnitGateState) -> jax.Array:
        return _penalty(state, prior=prior)

    def learn(state: UnitGateState, params, grads, key: jax.Array, step) -> UnitGateState:
        return _learn(state, params, grads, key, step, opt=opt, prior=prior)

    return Controller(
        name="variational",
        init=init,
        decide=_decide,
        drop_to=LYSED,
        gates=_gates,
        learn=learn,
        penalty=penalty,
    )
