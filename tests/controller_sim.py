"""Helpers for simulated controller runs: observations and a NumPy reference of the surgery.

``realise`` is an obviously-correct NumPy version of the rule of
:func:`emrakul.surgery.operate.operate` (without cooldown locks): per pruned layer keep
``n - round(s * n)`` alive, first the best ``drop_score`` among the alive minus
``round(churn * n_alive)``, then the best ``grow_score`` among the eligible others (sedated,
lysed if ``regrow_lysed``, just dropped). It costs no compilation, so long simulated runs stay
fast; ``test_controllers_dynamic`` checks it against ``operate``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from emrakul import masks
from emrakul.controllers.base import Observation
from emrakul.surgery import lifecycle
from emrakul.surgery.lifecycle import ALIVE, LYSED, SEDATED

SHAPES = {"Dense_0": {"kernel": (16, 12), "bias": (12,)}, "Dense_1": {"kernel": (12, 10)}}
SIZES = (192, 120)
TARGET = np.array([0.75, 0.5], np.float32)


def make_params(seed: int = 0, shapes=SHAPES):
    """Standard-normal float32 params (NumPy randomness: no compilation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def kernels(tree):
    """The pruned leaves (the kernels) of a SHAPES-like tree, in order."""
    return [tree["Dense_0"]["kernel"], tree["Dense_1"]["kernel"]]


def life_state(params):
    """The initial lifecycle state tree (all ALIVE, scalar markers on unpruned leaves)."""
    return lifecycle.init(masks.init(params)).state


def observation(params, grads, state, vitals, step, key=None, target=TARGET, total=1000):
    sizes = tuple(int(np.size(s)) for s in jax.tree.leaves(state) if np.ndim(s) > 0)
    return Observation(
        step=jnp.asarray(step, jnp.int32),
        total_steps=total,
        params=params,
        grads=grads,
        state=state,
        vitals=vitals,
        layer_size=sizes,
        target=jnp.asarray(target, jnp.float32),
        key=jax.random.PRNGKey(0) if key is None else key,
    )


@functools.cache
def jit_decide(controller, total: int = 1000, target: tuple = tuple(TARGET.tolist())):
    """``(ctrl_state, state, params, grads, vitals, step) -> (Decision, ctrl_state)``, jitted
    (cached per controller, so tests that share a controller share the compilation)."""

    @jax.jit
    def decide(ctrl_state, state, params, grads, vitals, step):
        obs = observation(params, grads, state, vitals, step, target=target, total=total)
        return controller.decide(obs, ctrl_state)

    return decide


@functools.cache
def _jit_init(controller, total: int, target: tuple):
    @jax.jit
    def fn(params, vitals, key):
        state = life_state(params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        obs = observation(params, zeros, state, vitals, 0, target=target, total=total)
        return controller.init(params, obs, key)

    return fn


def init(controller, params, vitals=None, total: int = 1000, target=TARGET, seed: int = 1):
    """The initial lifecycle state tree and the controller state (``init`` jitted, cached)."""
    target = tuple(np.asarray(target, np.float32).tolist())
    fn = _jit_init(controller, total, target)
    return life_state(params), fn(params, vitals, jax.random.PRNGKey(seed))


def _order(score: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Flat indices of ``allowed`` entries by descending score, ties by position."""
    idx = np.flatnonzero(allowed)
    return idx[np.argsort(-score.ravel()[idx], kind="stable")]


def realise_layer(state, param, drop, grow, sparsity, churn, drop_to, regrow_lysed, units=None):
    """One layer of the surgery; ``units`` (an axis) selects whole units by summed drop score."""
    state, param = np.asarray(state), np.array(param)
    drop = np.asarray(drop, np.float32)
    n = state.size
    n_target = n - int(np.round(np.float32(sparsity) * np.float32(n)))
    alive = (state == ALIVE).ravel()
    eligible = alive | (state == SEDATED).ravel() | (regrow_lysed & (state == LYSED).ravel())
    new_alive = np.zeros(n, bool)
    if units is None:
        n_alive = int(alive.sum())
        n_churn = int(np.round(np.float32(churn) * np.float32(n_alive)))
        k_keep = max(min(n_alive, n_target) - n_churn, 0)
        new_alive[_order(drop, alive)[:k_keep]] = True
        candidates = eligible & ~new_alive
        k_grow = int(np.clip(n_target - k_keep, 0, candidates.sum()))
        new_alive[_order(np.asarray(grow, np.float32), candidates)[:k_grow]] = True
    else:
        axis = units % state.ndim
        others = tuple(a for a in range(state.ndim) if a != axis)
        per_unit = np.where(eligible.reshape(state.shape), drop, 0).sum(axis=others)
        u = per_unit.size
        k = u - int(np.round(np.float32(sparsity) * np.float32(u)))
        keep_units = np.zeros(u, bool)
        keep_units[_order(per_unit, np.ones(u, bool))[:k]] = True
        shape = [1] * state.ndim
        shape[axis] = u
        new_alive = (np.broadcast_to(keep_units.reshape(shape), state.shape).ravel()) & eligible
    new_alive = new_alive.reshape(state.shape)
    was = state == ALIVE
    new_state = np.where(was & ~new_alive, drop_to, np.where(~was & new_alive, ALIVE, state))
    if drop_to == LYSED:
        param = np.where(was & ~new_alive, 0, param)
    return new_state.astype(np.int8), param


def realise(controller, decision, state, params, units=None):
    """Applies ``decision`` (if ``decision.operate``) to the state and params trees (NumPy)."""
    if not bool(decision.operate):
        return state, params
    s_leaves, treedef = jax.tree.flatten(state)
    p_leaves = jax.tree.leaves(params)
    d_leaves = jax.tree.leaves(decision.drop_score)
    g_leaves = jax.tree.leaves(decision.grow_score)
    j = 0
    for i, s in enumerate(s_leaves):
        if np.ndim(s) == 0:
            continue
        s_leaves[i], p_leaves[i] = realise_layer(
            s,
            p_leaves[i],
            d_leaves[i],
            g_leaves[i],
            decision.sparsity[j],
            decision.churn[j],
            controller.drop_to,
            controller.regrow_lysed,
            units,
        )
        j += 1
    return treedef.unflatten(s_leaves), treedef.unflatten(p_leaves)


def layer_sparsity(state):
    return np.array([np.mean(np.asarray(s) != ALIVE) for s in kernels(state)])


def expected(sparsity, sizes=SIZES):
    """The realised sparsity of a per-layer request: round(s * n) / n."""
    return np.array(
        [np.round(np.float32(s) * np.float32(n)) / n for s, n in zip(sparsity, sizes, strict=True)]
    )
