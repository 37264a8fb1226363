"""Training learned stochastic gates that decide the mask, then hand over to it.

The machinery shared by the gate controllers (:mod:`emrakul.controllers.hard_concrete_gates`,
:mod:`emrakul.controllers.unit_gates`). Both keep gate parameters (and their own optax
optimizer state) in the controller state and use the optional ``gates`` / ``learn`` /
``penalty`` fields of :class:`~emrakul.controllers.base.Controller`:

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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emrakul._tree import PyTree, check_same_structure, path_str
from emrakul.controllers.base import Decision, Observation
from emrakul.controllers.checks import check_number
from emrakul.masks.tree import is_pruned

_INIT_NOISE = 0.01
"""Standard deviation of the noise added to the initial gate parameters (Louizos et al.'s
reference code does the same); it also breaks ties between untrained gates."""


def gate_optimizer(
    lr: float, optimizer: optax.GradientTransformation | None
) -> optax.GradientTransformation:
    """``optimizer`` if given (checked), else Adam with a traced learning rate ``lr``.

    Raises:
      TypeError: ``optimizer`` is not an optax transformation.
      ValueError: ``lr`` is not a finite number > 0.
    """
    if optimizer is not None:
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer}")
        return optimizer
    lr = check_number("lr", lr, low=0.0, low_open=True)
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def finalize_step(observation: Observation, finalize: float) -> jax.Array:
    """int32, the first step at which the mask takes over: ``ceil(finalize * T)``.

    Raises:
      ValueError: ``observation.total_steps`` is not a static positive int.
    """
    total = observation.total_steps
    if not isinstance(total, int | np.integer) or total < 1:
        raise ValueError(f"observation.total_steps must be a static positive int, got {total!r}")
    return jnp.int32(math.ceil(finalize * int(total) - 1e-9))


def check_gate_params(
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


def check_gate_observation(obs: Observation, gate_params: PyTree, name: str) -> int:
    """Trace-time check that ``obs`` fits the gate parameters; returns the pruned-layer count.

    Raises:
      ValueError: mismatched trees, pruned-leaf counts or target shape.
    """
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


def init_gate_params(observation: Observation, params: PyTree, key, shape_of, value: float):
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


def learn_step(
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


def sample_all(sample: Callable, gate_params: list[jax.Array], key: jax.Array) -> list:
    """One draw ``sample(key, x)`` over the concatenation of all gate parameters, split back.

    A single random draw per step, whatever the number of layers: one kernel to run and one
    random-number generator to compile (a ``vmap`` over keys makes each of those expensive).
    """
    flat = jnp.concatenate([g.reshape(-1) for g in gate_params])
    z = sample(key, flat)
    sizes = np.cumsum([g.size for g in gate_params])[:-1].tolist()
    return [part.reshape(g.shape) for part, g in zip(jnp.split(z, sizes), gate_params, strict=True)]


def chain_gradient(
    sample: Callable[[jax.Array, jax.Array], jax.Array],
    gate_params: PyTree,
    params: PyTree,
    grads: PyTree,
    key: jax.Array,
    reduce: Callable[[jax.Array], jax.Array],
) -> PyTree:
    """d loss / d gate parameters through the sample of :func:`forward_gates`, straight-through.

    ``reduce`` maps the per-weight ``grads * theta`` onto a gate parameter's shape (the
    identity for per-weight gates, a sum over the fan-in for unit gates).
    """
    leaves, treedef = jax.tree.flatten(gate_params)
    pruned = [i for i, gp in enumerate(leaves) if is_pruned(gp)]
    out = [jnp.zeros_like(gp) for gp in leaves]
    if not pruned:
        return treedef.unflatten(out)
    p_leaves, g_leaves = jax.tree.leaves(params), jax.tree.leaves(grads)
    _, vjp = jax.vjp(lambda xs: sample_all(sample, xs, key), [leaves[i] for i in pruned])
    d_gates = [
        reduce(
            jnp.asarray(g_leaves[i], jnp.float32) * jnp.asarray(p_leaves[i], jnp.float32)
        ).astype(leaves[i].dtype)
        for i in pruned
    ]
    for i, d in zip(pruned, vjp(d_gates)[0], strict=True):
        out[i] = d
    return treedef.unflatten(out)


def forward_gates(sample, gate_params: PyTree, params: PyTree, key: jax.Array, done: jax.Array):
    """The forward-pass multipliers: samples broadcast to the params, exactly 1 when done."""
    leaves = jax.tree.leaves(gate_params)
    p_leaves, treedef = jax.tree.flatten(params)
    out = [jnp.ones((), jnp.result_type(p)) for p in p_leaves]
    pruned = [i for i, gp in enumerate(leaves) if is_pruned(gp)]
    if not pruned:
        return treedef.unflatten(out)
    for i, z in zip(pruned, sample_all(sample, [leaves[i] for i in pruned], key), strict=True):
        dtype = jnp.result_type(p_leaves[i])
        z = jnp.broadcast_to(z, jnp.shape(p_leaves[i])).astype(dtype)
        out[i] = jnp.where(done, jnp.ones((), dtype), z)
    return treedef.unflatten(out)


def final_decision(num: int, obs: Observation, score: PyTree, go: jax.Array) -> Decision:
    """The one-off final surgery: every layer to its target by ``score``, if ``go``."""
    return Decision(
        sparsity=jnp.asarray(obs.target, jnp.float32).reshape((num,)),
        churn=jnp.zeros((num,), jnp.float32),
        drop_score=score,
        grow_score=score,
        operate=jnp.asarray(go, bool),
    )
