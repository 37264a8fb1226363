"""Gate controllers: learned stochastic gates that decide the mask, then hand over to it.

Both controllers keep gate parameters (and their own optax optimizer state) in the controller
state and use the optional ``gates`` / ``learn`` / ``penalty`` fields of
:class:`~emrakul.controllers.base.Controller`:

* ``gates(state, params, key)`` gives the float multipliers of this step's forward pass. All
  gates of a step are *one* draw, over the concatenation (in flattening order) of the gate
  parameters of the pruned leaves, split back per leaf: ``hard_concrete(key, concat(...))``
  or ``gumbel_softmax_mask(key, concat(...), temperature)``.
* ``learn(state, params, grads, key, step)`` takes ``grads`` = d loss / d effective weight
  (the effective weight is ``theta * gate``) and must get the *same* ``key`` as the ``gates``
  call of that forward pass: then d loss / d gate = ``grads * theta`` is chained exactly
  through the sample that was used, plus the gradient of :attr:`penalty`, and one optimizer
  step is taken on the gate parameters.
* ``decide`` does nothing (``operate=False``) until the first surgery with
  ``step >= finalize * T``. There it prunes, once, every layer to ``observation.target`` by the
  learned gate parameters (LYSED), so the final sparsity is exactly the target; from then on
  the gates are exactly 1, ``learn`` is a no-op and the mask alone decides.

Continuous hyperparameters (penalty weights, temperature, the learning rate through
``optax.inject_hyperparams``) are traced scalars in the state: changing them does not
recompile, and ``vmap`` over states sweeps them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emrakul._tree import PyTree, check_same_structure, path_str
from emrakul.controllers.base import Controller, Decision, Observation
from emrakul.masks.hard_concrete import hard_concrete, hard_concrete_prob_nonzero
from emrakul.masks.stochastic import gumbel_softmax_mask
from emrakul.masks.tree import is_pruned
from emrakul.surgery.lifecycle import LYSED

_INIT_NOISE = 0.01
"""Standard deviation of the noise added to the initial gate parameters (Louizos et al.'s
reference code does the same); it also breaks ties between untrained gates."""


# --------------------------------------------------------------------------------------------
# helpers shared by both controllers


def _check_number(name: str, value: Any, *, low: float, low_open: bool, high=math.inf) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
        bound = f"> {low}" if low_open else f">= {low}"
        if high < math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}, got {name}={value!r}")
    return v


def _optimizer(lr: float, optimizer: optax.GradientTransformation | None):
    if optimizer is not None:
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer}")
        return optimizer
    lr = _check_number("lr", lr, low=0.0, low_open=True)
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def _finalize_at(observation: Observation, finalize: float) -> jax.Array:
    total = observation.total_steps
    if not isinstance(total, int | np.integer) or total < 1:
        raise ValueError(f"observation.total_steps must be a static positive int, got {total!r}")
    return jnp.int32(math.ceil(finalize * int(total) - 1e-9))


def _check_params(
    params: PyTree, gate_params: PyTree, name: str, shape_of, what: str = "params"
) -> None:
    """Trace-time check that ``params`` fits the gate parameters (structure and shapes)."""
    check_same_structure(params, gate_params, what, name)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, p), g in zip(flat, jax.tree.leaves(gate_params), strict=True):
        if is_pruned(g) and shape_of(jnp.shape(p)) != jnp.shape(g):
            raise ValueError(
                f"{what} leaf '{path_str(path)}' has shape {jnp.shape(p)}, which does not fit "
                f"its {name} of shape {jnp.shape(g)}; was the state made by init on these params?"
            )
        if is_pruned(g) and not jnp.issubdtype(jnp.result_type(p), jnp.floating):
            raise TypeError(f"{what} leaf '{path_str(path)}' is not floating")


def _check_observation(obs: Observation, gate_params: PyTree, name: str) -> int:
    check_same_structure(obs.params, obs.state, "observation.params", "observation.state")
    check_same_structure(obs.state, gate_params, "observation.state", name)
    num = sum(1 for s in jax.tree.leaves(obs.state) if is_pruned(s))
    ours = sum(1 for g in jax.tree.leaves(gate_params) if is_pruned(g))
    if ours != num:
        raise ValueError(
            f"the lifecycle prunes {num} leaves but the controller state gates {ours}; was the "
            "state made by init on this observation?"
        )
    if jnp.shape(obs.target) != (num,):
        raise ValueError(
            f"observation.target must have shape ({num},), got {jnp.shape(obs.target)}"
        )
    return num


def _init_params(observation: Observation, params: PyTree, key, shape_of, value: float):
    """Gate parameters ``value + 0.01 * N(0, 1)`` on pruned leaves, 0 markers elsewhere."""
    check_same_structure(params, observation.state, "params", "observation.state")
    states, treedef = jax.tree.flatten(observation.state)
    keys = jax.random.split(key, len(states))
    out = [
        value + _INIT_NOISE * jax.random.normal(k, shape_of(jnp.shape(s)), jnp.float32)
        if is_pruned(s)
        else jnp.float32(0.0)
        for s, k in zip(states, keys, strict=True)
    ]
    return treedef.unflatten(out)


def _learn_step(
    optimizer: optax.GradientTransformation,
    gate_params: PyTree,
    opt_state: Any,
    grad: PyTree,
    active: jax.Array,
) -> tuple[PyTree, Any]:
    """One optimizer step on the gate parameters, kept only where ``active``."""
    grad = jax.tree.map(lambda g, x: g if is_pruned(x) else jnp.zeros_like(x), grad, gate_params)
    updates, new_opt = optimizer.update(grad, opt_state, gate_params)
    new_params = optax.apply_updates(gate_params, updates)
    new_params = jax.tree.map(
        lambda n, o: jnp.where(active, n, o) if is_pruned(o) else o, new_params, gate_params
    )
    new_opt = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_opt, opt_state)
    return new_params, new_opt


def _sample_all(sample: Callable, gate_params: list[jax.Array], key: jax.Array) -> list:
    """One draw ``sample(key, x)`` over the concatenation of all gate parameters, split back.

    A single random draw per step, whatever the number of layers: one kernel to run and one
    random-number generator to compile (a ``vmap`` over keys makes each of those expensive).
    """
    flat = jnp.concatenate([g.reshape(-1) for g in gate_params])
    z = sample(key, flat)
    sizes = np.cumsum([g.size for g in gate_params])[:-1].tolist()
    return [part.reshape(g.shape) for part, g in zip(jnp.split(z, sizes), gate_params, strict=True)]


def _chain(
    sample: Callable[[jax.Array, jax.Array], jax.Array],
    gate_params: PyTree,
    params: PyTree,
    grads: PyTree,
    key: jax.Array,
    reduce: Callable[[jax.Array], jax.Array],
) -> PyTree:
    """d loss / d gate parameters through the sample of :func:`_gates`, straight-through.

    ``reduce`` maps the per-weight ``grads * theta`` onto a gate parameter's shape (the
    identity for per-weight gates, a sum over the fan-in for unit gates).
    """
    leaves, treedef = jax.tree.flatten(gate_params)
    pruned = [i for i, gp in enumerate(leaves) if is_pruned(gp)]
    out = [jnp.zeros_like(gp) for gp in leaves]
    if not pruned:
        return treedef.unflatten(out)
    p_leaves, g_leaves = jax.tree.leaves(params), jax.tree.leaves(grads)
    _, vjp = jax.vjp(lambda xs: _sample_all(sample, xs, key), [leaves[i] for i in pruned])
    d_gates = [
        reduce(
            jnp.asarray(g_leaves[i], jnp.float32) * jnp.asarray(p_leaves[i], jnp.float32)
        ).astype(leaves[i].dtype)
        for i in pruned
    ]
    for i, d in zip(pruned, vjp(d_gates)[0], strict=True):
        out[i] = d
    return treedef.unflatten(out)


def _gates(sample, gate_params: PyTree, params: PyTree, key: jax.Array, done: jax.Array):
    """The forward-pass multipliers: samples broadcast to the params, exactly 1 when done."""
    leaves = jax.tree.leaves(gate_params)
    p_leaves, treedef = jax.tree.flatten(params)
    out = [jnp.ones((), jnp.result_type(p)) for p in p_leaves]
    pruned = [i for i, gp in enumerate(leaves) if is_pruned(gp)]
    if not pruned:
        return treedef.unflatten(out)
    for i, z in zip(pruned, _sample_all(sample, [leaves[i] for i in pruned], key), strict=True):
        dtype = jnp.result_type(p_leaves[i])
        z = jnp.broadcast_to(z, jnp.shape(p_leaves[i])).astype(dtype)
        out[i] = jnp.where(done, jnp.ones((), dtype), z)
    return treedef.unflatten(out)


def _decision(num: int, obs: Observation, score: PyTree, go: jax.Array) -> Decision:
    return Decision(
        sparsity=jnp.asarray(obs.target, jnp.float32).reshape((num,)),
        churn=jnp.zeros((num,), jnp.float32),
        drop_score=score,
        grow_score=score,
        operate=jnp.asarray(go, bool),
    )


# --------------------------------------------------------------------------------------------
# L0 hard-concrete gates


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


def _l0_fraction(log_alpha: PyTree) -> jax.Array:
    """Expected fraction of non-zero gates, ``sum_i P(z_i != 0) / N`` over pruned leaves."""
    pruned = [la for la in jax.tree.leaves(log_alpha) if is_pruned(la)]
    total = sum(la.size for la in pruned)
    return sum(jnp.sum(hard_concrete_prob_nonzero(la)) for la in pruned) / max(total, 1)


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
    l0_weight = _check_number("l0_weight", l0_weight, low=0.0, low_open=False)
    init_log_alpha = _check_number("init_log_alpha", init_log_alpha, low=-math.inf, low_open=True)
    finalize = _check_number("finalize", finalize, low=0.0, low_open=True, high=1.0)
    opt = _optimizer(lr, optimizer)
    same = lambda shape: shape

    def init(params: PyTree, observation: Observation, key: jax.Array) -> L0State:
        finalize_at = _finalize_at(observation, finalize)
        log_alpha = _init_params(observation, params, key, same, init_log_alpha)
        return L0State(
            log_alpha=log_alpha,
            opt_state=opt.init(log_alpha),
            l0_weight=jnp.float32(l0_weight),
            finalize_at=finalize_at,
            done=jnp.zeros((), bool),
        )

    def gates(state: L0State, params: PyTree, key: jax.Array) -> PyTree:
        _check_params(params, state.log_alpha, "log_alpha", same)
        return _gates(hard_concrete, state.log_alpha, params, key, state.done)

    def penalty(state: L0State) -> jax.Array:
        value = state.l0_weight * _l0_fraction(state.log_alpha)
        return jnp.where(state.done, 0.0, value)

    def learn(state: L0State, params: PyTree, grads: PyTree, key: jax.Array, step) -> L0State:
        _check_params(params, state.log_alpha, "log_alpha", same)
        _check_params(grads, state.log_alpha, "log_alpha", same, "grads")
        task = _chain(hard_concrete, state.log_alpha, params, grads, key, lambda x: x)
        pen = jax.grad(lambda la: state.l0_weight * _l0_fraction(la))(state.log_alpha)
        grad = jax.tree.map(jnp.add, task, pen)
        active = ~state.done & (jnp.asarray(step) < state.finalize_at)
        log_alpha, opt_state = _learn_step(opt, state.log_alpha, state.opt_state, grad, active)
        return state._replace(log_alpha=log_alpha, opt_state=opt_state)

    def decide(obs: Observation, state: L0State) -> tuple[Decision, L0State]:
        num = _check_observation(obs, state.log_alpha, "log_alpha")
        _check_params(obs.params, state.log_alpha, "log_alpha", same)
        go = (jnp.asarray(obs.step) >= state.finalize_at) & ~state.done
        decision = _decision(num, obs, state.log_alpha, go)
        return decision, state._replace(done=state.done | go)

    return Controller(
        name="l0",
        init=init,
        decide=decide,
        drop_to=LYSED,
        gates=gates,
        learn=learn,
        penalty=penalty,
    )


# --------------------------------------------------------------------------------------------
# Variational Bernoulli unit gates with a complexity-aware penalty


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
    complexity_weight = _check_number("complexity_weight", complexity_weight, low=0, low_open=False)
    temperature = _check_number("temperature", temperature, low=0.0, low_open=True)
    finalize = _check_number("finalize", finalize, low=0.0, low_open=True, high=1.0)
    init_logit = _check_number("init_logit", init_logit, low=-math.inf, low_open=True)
    kl_weight = _check_number("kl_weight", kl_weight, low=0.0, low_open=False)
    prior = _check_number("prior", prior, low=0.0, low_open=True, high=1.0)
    if prior >= 1.0:
        raise ValueError(f"prior must lie in (0, 1), got prior={prior}")
    opt = _optimizer(lr, optimizer)
    units = lambda shape: shape[-1:]

    def init(params: PyTree, observation: Observation, key: jax.Array) -> UnitGateState:
        finalize_at = _finalize_at(observation, finalize)
        logits = _init_params(observation, params, key, units, init_logit)

        def fan_in(s):
            shape = jnp.shape(s)
            return jnp.full(shape[-1:], np.prod(shape[:-1]), jnp.float32)

        cost = jax.tree.map(
            lambda s: fan_in(s) if is_pruned(s) else jnp.float32(0.0), observation.state
        )
        return UnitGateState(
            logits=logits,
            cost=cost,
            opt_state=opt.init(logits),
            complexity_weight=jnp.float32(complexity_weight),
            kl_weight=jnp.float32(kl_weight),
            temperature=jnp.float32(temperature),
            finalize_at=finalize_at,
            done=jnp.zeros((), bool),
        )

    def _sample(state: UnitGateState):
        return lambda k, lg: gumbel_softmax_mask(k, lg, state.temperature)

    def _pen(logits: PyTree, state: UnitGateState) -> jax.Array:
        cw, kw = state.complexity_weight, state.kl_weight
        return _units_penalty(logits, state.cost, cw, kw, prior)

    def gates(state: UnitGateState, params: PyTree, key: jax.Array) -> PyTree:
        _check_params(params, state.logits, "logits", units)
        return _gates(_sample(state), state.logits, params, key, state.done)

    def penalty(state: UnitGateState) -> jax.Array:
        return jnp.where(state.done, 0.0, _pen(state.logits, state))

    def learn(state: UnitGateState, params, grads, key: jax.Array, step) -> UnitGateState:
        _check_params(params, state.logits, "logits", units)
        _check_params(grads, state.logits, "logits", units, "grads")

        def per_unit(x):
            return jnp.sum(x.reshape(-1, x.shape[-1]), axis=0)

        task = _chain(_sample(state), state.logits, params, grads, key, per_unit)
        pen = jax.grad(_pen)(state.logits, state)
        grad = jax.tree.map(jnp.add, task, pen)
        active = ~state.done & (jnp.asarray(step) < state.finalize_at)
        logits, opt_state = _learn_step(opt, state.logits, state.opt_state, grad, active)
        return state._replace(logits=logits, opt_state=opt_state)

    def decide(obs: Observation, state: UnitGateState) -> tuple[Decision, UnitGateState]:
        num = _check_observation(obs, state.logits, "logits")
        _check_params(obs.params, state.logits, "logits", units)

        def score(lg, p):
            if not is_pruned(lg):
                return jnp.float32(0.0)
            mag = jnp.abs(jnp.asarray(p, jnp.float32)) + 1e-8
            return jax.nn.sigmoid(lg) * mag

        drop = jax.tree.map(score, state.logits, obs.params)
        go = (jnp.asarray(obs.step) >= state.finalize_at) & ~state.done
        decision = _decision(num, obs, drop, go)
        return decision, state._replace(done=state.done | go)

    return Controller(
        name="variational",
        init=init,
        decide=decide,
        drop_to=LYSED,
        gates=gates,
        learn=learn,
        penalty=penalty,
    )
