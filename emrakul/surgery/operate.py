"""The surgery: turn a controller's :class:`~emrakul.controllers.base.Decision` into lifecycle
changes.

For every pruned layer with ``n`` weights, ``n_target = n - round(sparsity * n)`` weights are
ALIVE afterwards (exactly, whenever the locks below allow it).

Unstructured layers, two stages (the drop/grow scheme of SET, Mocanu et al. 2018, and RigL,
Evci et al. 2020, which reduces to magnitude pruning, Han et al. 2015 / Zhu & Gupta 2017, when
``churn = 0``):

1. *Keep*: among the currently ALIVE weights, the ``min(n_alive, n_target) - n_churn`` with
   the highest ``drop_score`` stay alive, ``n_churn = round(churn * n_alive)``.
2. *Grow*: up to ``n_target`` alive weights are filled from the *eligible* non-kept weights by
   ``grow_score``: SEDATED weights (waking), LYSED ones if ``regrow_lysed``, and the ALIVE ones
   just dropped in stage 1 (RigL may regrow a weight it has just dropped; it then simply stays
   alive).

Flip-flop damping: a weight whose state changed less than ``cooldown`` steps ago is *locked*
and keeps its state. Locked alive weights are always kept in stage 1 (``+inf`` drop score; the
keep count is raised to their number if needed) and locked non-alive weights are never
eligible, so the counts stay exact whenever the locks make that possible.

Structured layers (:class:`~emrakul.masks.NM`, :class:`~emrakul.masks.Units`) select in one
stage, ``masks.select(score, structure, sparsity)``, by ``drop_score`` (``grow_score`` and
``churn`` are not used). A weight may end up alive if it is ALIVE now or *eligible* (not
locked, and SEDATED, or LYSED with ``regrow_lysed``); locked alive weights score ``+inf`` and
non-eligible non-alive weights ``-inf`` (N:M: per weight, inside its group of ``m``). For
``Units``, a unit containing a locked alive weight scores ``+inf``, a unit with no weight that
may be alive scores ``-inf``, and otherwise the unit's score sums the drop scores of the
weights that may be alive. A selected unit or group never revives a non-eligible weight, and
a locked alive weight stays alive even where its unit or group is not selected, so the
structure holds exactly when no weight in it is locked or barred.

Weights leaving ALIVE become ``drop_to`` (or LYSED where ``decision.lyse`` marks them; marked
SEDATED weights that stay out of ALIVE are lysed as well): ``LYSED`` weights are set to 0 and
their optimizer moments reset; ``SEDATED`` weights keep their value and keep learning.
Weights entering ALIVE from SEDATED keep their value ("waking"); from LYSED they restart at 0
with reset moments (RigL's zero initialisation of regrown connections).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree, check_same_structure, leaf_paths
from emrakul.masks.select import keep_count, select
from emrakul.masks.structures import Units, Unstructured, check_fits, check_structure
from emrakul.masks.topk import topk_mask
from emrakul.masks.tree import is_pruned
from emrakul.surgery.lifecycle import ALIVE, LYSED, SEDATED, Lifecycle

_BOUND = 1e30
"""Scores are clipped to ``[-_BOUND, _BOUND]`` (NaN to ``-_BOUND``) so that ``+-inf`` is
reserved for locks and barred weights, and so that unit sums cannot overflow."""


class SurgeryResult(NamedTuple):
    """What :func:`operate` returns.

    Attributes:
      life: the new :class:`~emrakul.surgery.lifecycle.Lifecycle`.
      params: the new params: weights that became LYSED are 0, all others unchanged.
      reset: bool tree, params-shaped for pruned leaves (scalar ``False`` markers elsewhere):
        where optimizer moments must be zeroed (weights that became or left LYSED).
      cut: float32 [num_layers], the fraction of the previously alive weights that left ALIVE.
      grown: float32 [num_layers], the weights that entered ALIVE over the layer size.
    """

    life: Lifecycle
    params: PyTree
    reset: PyTree
    cut: jax.Array
    grown: jax.Array


class _Layer(NamedTuple):
    state: jax.Array
    changed_at: jax.Array
    param: jax.Array
    reset: jax.Array
    changes: jax.Array
    reversals: jax.Array
    cut: jax.Array
    grown: jax.Array


def _finite(score: jax.Array) -> jax.Array:
    score = jnp.asarray(score, jnp.float32)
    return jnp.clip(jnp.where(jnp.isnan(score), -_BOUND, score), -_BOUND, _BOUND)


def _count(x: jax.Array) -> jax.Array:
    return jnp.sum(x, dtype=jnp.int32)


def _unstructured(alive, locked, eligible, drop, grow, sparsity, churn):
    """Stage 1 (keep by drop score) and stage 2 (grow by grow score); the new alive mask."""
    n = alive.size
    inf = jnp.float32(jnp.inf)
    n_alive = _count(alive)
    n_target = keep_count(sparsity, n)
    n_churn = jnp.maximum(jnp.round(churn * n_alive.astype(jnp.float32)), 0).astype(jnp.int32)
    n_locked = _count(alive & locked)
    k_keep = jnp.maximum(jnp.minimum(n_alive, n_target) - n_churn, n_locked)
    keep_score = jnp.where(alive, jnp.where(locked, inf, _finite(drop)), -inf)
    kept = topk_mask(keep_score, jnp.clip(k_keep, 0, n_alive)) & alive
    candidates = eligible & ~kept
    k_grow = jnp.clip(n_target - _count(kept), 0, _count(candidates))
    grown = topk_mask(jnp.where(candidates, _finite(grow), -inf), k_grow) & candidates
    return kept | grown


def _structured(alive, locked, can_enter, drop, sparsity, structure):
    """One-stage selection for N:M / Units layers (see the module docstring)."""
    inf = jnp.float32(jnp.inf)
    locked_alive = alive & locked
    barred = ~alive & ~can_enter
    score = _finite(drop)
    if isinstance(structure, Units):
        axis = structure.axis % score.ndim
        others = tuple(a for a in range(score.ndim) if a != axis)
        any_locked = jnp.any(locked_alive, axis=others, keepdims=True)
        all_barred = jnp.all(barred, axis=others, keepdims=True)
        score = jnp.where(barred, 0.0, score)
        score = jnp.where(any_locked, inf, jnp.where(all_barred, -inf, score))
    else:
        score = jnp.where(locked_alive, inf, jnp.where(barred, -inf, score))
    chosen = select(score, structure, sparsity)
    return (alive & (chosen | locked)) | (~alive & chosen & can_enter)


def _operate_layer(
    state,
    changed_at,
    param,
    drop,
    grow,
    sparsity,
    churn,
    go,
    step,
    cooldown,
    structure,
    drop_to: int,
    regrow_lysed: bool,
    lyse=None,
) -> _Layer:
    alive = state == ALIVE
    since = step - changed_at
    locked = since < cooldown
    can_enter = ~alive & ~locked & ((state == SEDATED) | ((state == LYSED) & regrow_lysed))
    if isinstance(structure, Unstructured):
        new_alive = _unstructured(alive, locked, can_enter | alive, drop, grow, sparsity, churn)
    else:
        new_alive = _structured(alive, locked, can_enter, drop, sparsity, structure)
    left = alive & ~new_alive & go
    entered = ~alive & new_alive & go
    if lyse is None:
        to_lysed = left if drop_to == LYSED else jnp.zeros_like(left)
    else:  # per-weight lysis: leaving weights marked, and marked sedated ones that stay out
        marked = jnp.asarray(lyse, bool) & ~locked & go
        left_lysed = left & marked if drop_to == SEDATED else left
        to_lysed = left_lysed | ((state == SEDATED) & ~new_alive & marked)
    changed = left | entered | to_lysed
    new_state = jnp.where(left, jnp.int8(drop_to), jnp.where(entered, jnp.int8(ALIVE), state))
    new_state = jnp.where(to_lysed, jnp.int8(LYSED), new_state)
    lysed_now = to_lysed
    reset = lysed_now | (entered & (state == LYSED))
    n_alive = _count(alive)
    return _Layer(
        state=new_state.astype(jnp.int8),
        changed_at=jnp.where(changed, step, changed_at).astype(jnp.int32),
        param=jnp.where(lysed_now, jnp.zeros((), param.dtype), param),
        reset=reset,
        changes=_count(changed),
        reversals=_count(changed & (since < 2 * cooldown)),
        cut=_count(left).astype(jnp.float32) / jnp.maximum(n_alive, 1).astype(jnp.float32),
        grown=_count(entered).astype(jnp.float32) / jnp.float32(alive.size),
    )


def _check_leaf_shapes(life, decision, params, pruned: list[int]) -> None:
    states = jax.tree.leaves(life.state)
    paths = leaf_paths(params)
    leaves = {
        "params": jax.tree.leaves(params),
        "life.changed_at": jax.tree.leaves(life.changed_at),
        "decision.drop_score": jax.tree.leaves(decision.drop_score),
        "decision.grow_score": jax.tree.leaves(decision.grow_score),
    }
    for i in pruned:
        for name, ls in leaves.items():
            if jnp.shape(ls[i]) != jnp.shape(states[i]):
                raise ValueError(
                    f"{name} leaf '{paths[i]}' has shape {jnp.shape(ls[i])}, the lifecycle state "
                    f"has {jnp.shape(states[i])}"
                )


def _check(life, decision, params, structures, drop_to) -> list[int]:
    check_same_structure(params, life.state, "params", "life.state")
    check_same_structure(params, life.changed_at, "params", "life.changed_at")
    check_same_structure(params, decision.drop_score, "params", "decision.drop_score")
    check_same_structure(params, decision.grow_score, "params", "decision.grow_score")
    states = jax.tree.leaves(life.state)
    pruned = [i for i, s in enumerate(states) if is_pruned(s)]
    num = len(pruned)
    if not isinstance(structures, tuple) or len(structures) != num:
        raise ValueError(
            f"structures must be a tuple with one structure per pruned leaf ({num}), "
            f"got {structures!r}"
        )
    for s in structures:
        check_structure(s)
    if drop_to not in (LYSED, SEDATED):
        raise ValueError(f"drop_to must be LYSED ({LYSED}) or SEDATED ({SEDATED}), got {drop_to}")
    for name in ("sparsity", "churn", "operate"):
        value = getattr(decision, name)
        want = () if name == "operate" else (num,)
        if jnp.shape(value) != want:
            raise ValueError(f"decision.{name} must have shape {want}, got {jnp.shape(value)}")
    _check_leaf_shapes(life, decision, params, pruned)
    paths = leaf_paths(params)
    for i, s in zip(pruned, structures, strict=True):
        check_fits(s, jnp.shape(states[i]), f"pruned leaf '{paths[i]}'")
    return pruned


def operate(
    life: Lifecycle,
    decision,
    params: PyTree,
    step,
    *,
    structures: tuple,
    drop_to: int,
    regrow_lysed: bool,
    cooldown,
) -> SurgeryResult:
    """Applies a controller's decision to the lifecycle and the params (module docstring).

    Args:
      life: the current lifecycle.
      decision: a :class:`~emrakul.controllers.base.Decision` (``sparsity`` and ``churn`` of
        shape ``[num_layers]``, ``operate`` a bool scalar, score trees with the params'
        structure; only their pruned leaves are read).
      params: the dense weights theta.
      step: int scalar, the host step (traced).
      structures: static tuple, one :mod:`emrakul.masks` structure per pruned leaf.
      drop_to: static, ``LYSED`` or ``SEDATED``: what weights leaving ALIVE become.
      regrow_lysed: static, whether LYSED weights are eligible to re-enter ALIVE.
      cooldown: int scalar (traced): a weight that changed state less than ``cooldown`` steps
        ago keeps its state; changes within ``2 * cooldown`` steps count as reversals.

    Returns:
      A :class:`SurgeryResult`. With ``decision.operate`` False, everything is unchanged,
      ``reset`` is all False and ``cut``/``grown`` are 0.

    Raises:
      ValueError: trees that do not match, a wrong number of structures, bad shapes, a
        structure that does not fit its leaf (named by its path), or a ``drop_to`` that is
        neither LYSED nor SEDATED.
    """
    pruned = _check(life, decision, params, structures, drop_to)
    step = jnp.asarray(step, jnp.int32)
    cooldown = jnp.asarray(cooldown, jnp.int32)
    go = jnp.asarray(decision.operate, bool)
    treedef = jax.tree.structure(params)
    p_leaves = jax.tree.leaves(params)
    s_leaves = jax.tree.leaves(life.state)
    c_leaves = jax.tree.leaves(life.changed_at)
    d_leaves = jax.tree.leaves(decision.drop_score)
    g_leaves = jax.tree.leaves(decision.grow_score)
    lyse = getattr(decision, "lyse", None)
    if lyse is not None:
        check_same_structure(params, lyse, "params", "decision.lyse")
    y_leaves = jax.tree.leaves(lyse) if lyse is not None else [None] * len(p_leaves)
    reset = [jnp.zeros((), bool) for _ in p_leaves]
    layers = []
    for j, (i, structure) in enumerate(zip(pruned, structures, strict=True)):
        leaves = (s_leaves[i], c_leaves[i], p_leaves[i], d_leaves[i], g_leaves[i])
        knobs = (decision.sparsity[j], decision.churn[j], go, step, cooldown)
        out = _operate_layer(*leaves, *knobs, structure, drop_to, regrow_lysed, y_leaves[i])
        s_leaves[i], c_leaves[i], p_leaves[i] = out.state, out.changed_at, out.param
        reset[i] = out.reset
        layers.append(out)

    def stack(name: str, dtype) -> jax.Array:
        return jnp.asarray([getattr(o, name) for o in layers], dtype).reshape((len(layers),))

    new_life = Lifecycle(
        state=jax.tree.unflatten(treedef, s_leaves),
        changed_at=jax.tree.unflatten(treedef, c_leaves),
        changes=life.changes + stack("changes", jnp.int32),
        reversals=life.reversals + stack("reversals", jnp.int32),
    )
    return SurgeryResult(
        life=new_life,
        params=jax.tree.unflatten(treedef, p_leaves),
        reset=jax.tree.unflatten(treedef, reset),
        cut=stack("cut", jnp.float32),
        grown=stack("grown", jnp.float32),
    )
