"""L0 regularisation with hard-concrete gates: one learned stochastic gate per weight.

Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0 Regularization".
The gates are trained by :mod:`emrakul.controllers.gate_training` (one draw per step, the
straight-through gradient chained through it) until the final surgery hands over to the mask.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from emrakul._tree import PyTree
from emrakul.controllers import gate_training as gt
from emrakul.controllers.base import Controller, Decision, Observation
from emrakul.controllers.checks import check_number
from emrakul.controllers.registry import register
from emrakul.masks.hard_concrete import hard_concrete, hard_concrete_prob_nonzero
from emrakul.masks.tree import is_pruned
from emrakul.surgery.lifecycle import LYSED


class L0State(NamedTuple):
    """State of :func:`l0`.

    Attributes:
      log_alpha: float32 gate locations, params-shaped on pruned leaves, scalar 0 markers
        elsewhere.
      opt_state: the optax state of the gate optimizer (Adam by default).
      l0_weight: float32, the weight of the expected-L0 penalty.
      finalize_at: int32, the first step at which the mask takes over.
      done: bool, whether the final surgery has happened (gates are then exactly 1).
    """

    log_alpha: PyTree
    opt_state: Any
    l0_weight: jax.Array
    finalize_at: jax.Array
    done: jax.Array


def _same(shape: tuple) -> tuple:
    """Per-weight gates: a gate parameter has its weight's shape."""
    return shape


def _l0_fraction(log_alpha: PyTree) -> jax.Array:
    """Expected fraction of non-zero gates, ``sum_i P(z_i != 0) / N`` over pruned leaves."""
    pruned = [la for la in jax.tree.leaves(log_alpha) if is_pruned(la)]
    total = sum(la.size for la in pruned)
    return sum(jnp.sum(hard_concrete_prob_nonzero(la)) for la in pruned) / max(total, 1)


def _init(
    params: PyTree,
    observation: Observation,
    key: jax.Array,
    *,
    opt: optax.GradientTransformation,
    finalize: float,
    init_log_alpha: float,
    l0_weight: float,
) -> L0State:
    finalize_at = gt.finalize_step(observation, finalize)
    log_alpha = gt.init_gate_params(observation, params, key, _same, init_log_alpha)
    return L0State(
        log_alpha=log_alpha,
        opt_state=opt.init(log_alpha),
        l0_weight=jnp.float32(l0_weight),
        finalize_at=finalize_at,
        done=jnp.zeros((), bool),
    )


def _gates(state: L0State, params: PyTree, key: jax.Array) -> PyTree:
    gt.check_gate_params(params, state.log_alpha, "log_alpha", _same)
    return gt.forward_gates(hard_concrete, state.log_alpha, params, key, state.done)


def _penalty(state: L0State) -> jax.Array:
    value = state.l0_weight * _l0_fraction(state.log_alpha)
    return jnp.where(state.done, 0.0, value)


def _learn(
    state: L0State,
    params: PyTree,
    grads: PyTree,
    key: jax.Array,
    step,
    *,
    opt: optax.GradientTransformation,
) -> L0State:
    gt.check_gate_params(params, state.log_alpha, "log_alpha", _same)
    gt.check_gate_params(grads, state.log_alpha, "log_alpha", _same, "grads")
    task = gt.chain_gradient(hard_concrete, state.log_alpha, params, grads, key, lambda x: x)
    pen = jax.grad(lambda la: state.l0_weight * _l0_fraction(la))(state.log_alpha)
    grad = jax.tree.map(jnp.add, task, pen)
    active = ~state.done & (jnp.asarray(step) < state.finalize_at)
    log_alpha, opt_state = gt.learn_step(opt, state.log_alpha, state.opt_state, grad, active)
    return state._replace(log_alpha=log_alpha, opt_state=opt_state)


def _decide(obs: Observation, state: L0State) -> tuple[Decision, L0State]:
    num = gt.check_gate_observation(obs, state.log_alpha, "log_alpha")
    gt.check_gate_params(obs.params, state.log_alpha, "log_alpha", _same)
    go = (jnp.asarray(obs.step) >= state.finalize_at) & ~state.done
    decision = gt.final_decision(num, obs, state.log_alpha, go)
    return decision, state._replace(done=state.done | go)


@register("l0")
def l0(
    l0_weight: float = 0.1,
    lr: float = 1e-2,
    init_log_alpha: float = 2.0,
    finalize: float = 0.8,
    optimizer: optax.GradientTransformation | None = None,
) -> Controller:
    """L0 regularisation with hard-concrete gates (Louizos, Welling & Kingma 2018, "Learning
    Sparse Neural Networks through L0 Regularization").

    Every prunable weight ``theta_i`` gets a gate ``z_i = hard_concrete(u_i, log_alpha_i)``
    (:func:`emrakul.masks.hard_concrete`: exact 0s and 1s, differentiable in ``log_alpha``)
    and the forward pass uses ``theta_i * z_i``. ``learn`` takes one optimizer step on
    ``log_alpha`` with the gradient of

        ``loss(theta * z) + l0_weight * sum_i P(z_i != 0) / N``

    (eq. 12 of the paper, normalised by the number of gates ``N`` so that ``l0_weight`` does
    not depend on the model size): ``grads * theta`` pulled back through the sample drawn with
    the same key (``jax.vjp`` of ``hard_concrete``), plus the penalty's closed-form gradient.
    At the first surgery with ``step >= finalize * T`` every layer is pruned to its target by
    ``drop_score = log_alpha`` (LYSED); afterwards the gates are exactly 1.

    Args:
      l0_weight: weight of the expected-L0 fraction in the loss (``>= 0``, traced).
      lr: learning rate of the default Adam optimizer (traced, through
        ``optax.inject_hyperparams``).
      init_log_alpha: initial gate location (2: test-time gate 0.96, ``P(z != 0) = 0.97``);
        ``0.01 * N(0, 1)`` noise is added.
      finalize: fraction of training at which the mask takes over, in (0, 1].
      optimizer: optional optax transformation for ``log_alpha`` instead of Adam(``lr``).

    Returns:
      A controller with ``gates``, ``learn`` and ``penalty`` (``l0_weight`` times the expected
      L0 fraction while the gates are active, 0 after finalisation).

    Raises:
      ValueError / TypeError: bad hyperparameters, named.
    """
    l0_weight = check_number("l0_weight", l0_weight, low=0.0, low_open=False)
    init_log_alpha = check_number("init_log_alpha", init_log_alpha, low=-math.inf, low_open=True)
    finalize = check_number("finalize", finalize, low=0.0, low_open=True, high=1.0)
    opt = gt.gate_optimizer(lr, optimizer)
    hyper = {"finalize": finalize, "init_log_alpha": init_log_alpha, "l0_weight": l0_weight}

    def init(params: PyTree, observation: Observation, key: jax.Array) -> L0State:
        return _init(params, observation, key, opt=opt, **hyper)

    def learn(state: L0State, params: PyTree, grads: PyTree, key: jax.Array, step) -> L0State:
        return _learn(state, params, grads, key, step, opt=opt)

    return Controller(
        name="l0",
        init=init,
        decide=_decide,
        drop_to=LYSED,
        gates=_gates,
        learn=learn,
        penalty=_penalty,
    )
