"""Running per-parameter gradient statistics: an optax-style ``init`` / ``update`` pair.

The state keeps, for every parameter, the statistics of a table of named entries
(:mod:`emrakul.vitals.statistics`): by default exponential moving averages (EMAs) of the
gradient and of the squared gradient (the raw material of the GSNR and the empirical Fisher, see
:mod:`emrakul.vitals.signals`), an EMA of how often the gradient flips sign, the sign it last had,
a dormancy age (how many consecutive updates the parameter has been inert, i.e. had a negligible
effective weight or a negligible gradient) and the Adam-style bias correction of each leaf.

Both functions are pure and elementwise (one fused expression per statistic plus a single
finiteness reduction per leaf), so they can run every training step inside the jitted train
step, under ``jax.vmap`` over a batch of runs, and with traced ``decay`` / thresholds without
recompiling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree, check_floating, check_same_structure, path_str
from emrakul.vitals.statistics import (
    AGE_MAX,
    COMPACT_STATISTICS,
    STATISTICS,
    LeafContext,
    Statistic,
    stat_dtype,
)

__all__ = [
    "AGE_MAX",
    "COMPACT_STATISTICS",
    "STATISTICS",
    "VitalsState",
    "init",
    "stat_dtype",
    "update",
    "update_leaves",
]


class VitalsState(NamedTuple):
    """Running gradient statistics of every parameter (the statistics are pytrees).

    Attributes:
      grad_mean: EMA of the gradient, shaped like the params. Its dtype is the params' dtype
        promoted to at least float32 (``bfloat16``/``float16`` params get float32 statistics).
      grad_sq: EMA of the squared gradient, same shapes and dtypes as ``grad_mean``.
      flip_rate: EMA of the gradient-sign-flip indicator, in ``[0, 1]``, same dtype as above.
      last_sign: ``int8``; the sign (-1 or +1) of the last nonzero gradient, 0 if there was none.
      age: ``uint16`` dormancy age: consecutive updates in which the parameter was inert. It
        saturates at 65535 and never wraps.
      debias: one float32 scalar per leaf, the product of all decays this leaf was updated with
        (1 at init). Bias-corrected EMAs are ``ema / (1 - debias)``.
      count: int32 scalar, the number of ``update`` calls.
      nonfinite: int32 scalar, the number of leaf-updates skipped because that gradient leaf held
        a NaN or an infinity.
      extra: the statistics of table entries that are not fields of this class, by name (empty
        for the default table :data:`~emrakul.vitals.statistics.STATISTICS`).
    """

    grad_mean: PyTree
    grad_sq: PyTree
    flip_rate: PyTree
    last_sign: PyTree
    age: PyTree
    debias: PyTree
    count: jax.Array
    nonfinite: jax.Array
    extra: dict[str, PyTree] = {}  # noqa: RUF012 (never mutated: states are rebuilt)

    def statistic(self, name: str) -> PyTree:
        """The statistic ``name`` (a field, or an entry of ``extra``)."""
        if name in FIELDS:
            return getattr(self, name)
        if name not in self.extra:
            known = sorted((*FIELDS, *self.extra))
            raise KeyError(f"the state holds no statistic {name!r}; it holds {known}")
        return self.extra[name]


FIELDS: tuple[str, ...] = VitalsState._fields[:6]
"""The fields of ``VitalsState`` that hold statistics (every table must define them)."""
_RESERVED = frozenset(VitalsState._fields) - set(FIELDS)


def _check_table(statistics: Sequence[Statistic]) -> None:
    """Static checks of a statistics table (names unique, every field defined, none reserved)."""
    for s in statistics:
        if not isinstance(s, Statistic):
            raise TypeError(f"statistics entries must be Statistic, got {type(s).__name__}")
    names = [s.name for s in statistics]
    if len(set(names)) != len(names):
        raise ValueError(f"statistics names must be unique, got {names}")
    missing = [f for f in FIELDS if f not in names]
    if missing:
        raise ValueError(f"statistics must define every VitalsState field; missing {missing}")
    reserved = sorted(_RESERVED & set(names))
    if reserved:
        raise ValueError(f"statistics names {reserved} are reserved by VitalsState")


def _assemble(trees: dict[str, PyTree], count: jax.Array, nonfinite: jax.Array) -> VitalsState:
    """A state from the statistics by name: fields by name, the rest into ``extra``."""
    extra = {k: v for k, v in trees.items() if k not in FIELDS}
    fields = {f: trees[f] for f in FIELDS}
    return VitalsState(**fields, count=count, nonfinite=nonfinite, extra=extra)


def init(params: PyTree, statistics: Sequence[Statistic] = STATISTICS) -> VitalsState:
    """Initial statistics for ``params``.

    Args:
      params: a pytree of floating arrays (only shapes and dtypes are used).
      statistics: the table of statistics to keep (default: the built-in ones); extend it, e.g.
        ``STATISTICS + (my_statistic,)``, to keep more, and pass the same table to ``update``.

    Returns:
      A ``VitalsState``; by default zero EMAs, signs and ages, ``debias`` of 1 and zero counters.

    Raises:
      TypeError: if a leaf of ``params`` is not floating (the message names its path), or an
        entry of ``statistics`` is not a ``Statistic``.
      ValueError: if ``statistics`` repeats a name, misses a field or uses a reserved name.
    """
    check_floating(params, "params")
    _check_table(statistics)
    trees = {s.name: jax.tree_util.tree_map(s.init, params) for s in statistics}
    zero = jnp.zeros((), jnp.int32)
    return _assemble(trees, count=zero, nonfinite=zero)


def _check_state(state: VitalsState, params: PyTree, statistics: Sequence[Statistic]) -> None:
    """The state holds exactly the table's statistics, each with the structure of ``params``."""
    _check_table(statistics)
    extra = sorted(s.name for s in statistics if s.name not in FIELDS)
    if sorted(state.extra) != extra:
        raise ValueError(
            f"state.extra holds statistics {sorted(state.extra)} but the table adds {extra}; "
            "make the state with init(params, statistics) from the same table"
        )
    for s in statistics:
        where = f"state.{s.name}" if s.name in FIELDS else f"state.extra[{s.name!r}]"
        check_same_structure(params, state.statistic(s.name), "params", where)


def _check_inputs(
    state: VitalsState,
    params: PyTree,
    grads: PyTree,
    masks: PyTree | None,
    statistics: Sequence[Statistic] = STATISTICS,
) -> None:
    """Trace-time checks of structures and shapes (all static, so free under jit)."""
    check_same_structure(params, grads, "params", "grads")
    _check_state(state, params, statistics)
    if masks is not None:
        check_same_structure(params, masks, "params", "masks")
    check_floating(grads, "grads")
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_g = jax.tree_util.tree_leaves(grads)
    flat_m = [None] * len(flat_p) if masks is None else jax.tree_util.tree_leaves(masks)
    flat_s = jax.tree_util.tree_leaves(state.grad_mean)
    for (path, p), g, m, s in zip(flat_p, flat_g, flat_m, flat_s, strict=True):
        shape = np.shape(p)
        if np.shape(g) != shape:
            raise ValueError(
                f"grads leaf '{path_str(path)}' has shape {np.shape(g)}, expected {shape}"
            )
        if np.shape(s) != shape:
            raise ValueError(
                f"state leaf '{path_str(path)}' has shape {np.shape(s)}, expected {shape}; "
                "was the state made by init() on these params?"
            )
        if m is not None and np.shape(m) not in (shape, ()):
            raise ValueError(
                f"masks leaf '{path_str(path)}' has shape {np.shape(m)}; it must be the "
                f"param's shape {shape} or () (a scalar True: leaf not pruned)"
            )


def _changed(statistic: Statistic, ctx: LeafContext, finite: jax.Array) -> jax.Array:
    """Where ``statistic`` takes its update: its ``changes``, and only if the gradient is finite."""
    return finite if statistic.changes is None else finite & statistic.changes(ctx)


def _leaf_update(
    statistics: Sequence[Statistic],
    decay: jax.Array,
    weight_threshold: float | jax.Array,
    grad_threshold: float | jax.Array,
) -> Callable[..., tuple[jax.Array, ...]]:
    """The per-leaf update of :func:`update_leaves` for a table of statistics.

    The returned function maps ``(*previous values in table order, param, grad, mask)`` to the
    new values and whether the gradient leaf was finite; where it was not, every statistic of
    the leaf keeps its previous value.
    """
    names = [s.name for s in statistics]

    def leaf_update(*args: jax.Array) -> tuple[jax.Array, ...]:
        *values, w, g, mask = args
        prev = dict(zip(names, values, strict=True))
        g = g.astype(stat_dtype(prev["grad_mean"].dtype))
        # One reduction per leaf. A sum is non-finite iff an element is NaN/Inf (NaN and Inf
        # propagate through additions, Inf + -Inf is NaN) or if it overflows, which needs an
        # element beyond float-max / size, whose square already overflows grad_sq: skipping is
        # right then too.
        finite = jnp.isfinite(jnp.sum(g))
        ctx = LeafContext(w, g, mask, decay, weight_threshold, grad_threshold, prev)
        new = [jnp.where(_changed(s, ctx, finite), s.update(ctx), prev[s.name]) for s in statistics]
        return (*new, finite)

    return leaf_update


def update(
    state: VitalsState,
    params: PyTree,
    grads: PyTree,
    masks: PyTree | None = None,
    decay: float | jax.Array = 0.99,
    weight_threshold: float | jax.Array = 1e-8,
    grad_threshold: float | jax.Array = 1e-8,
    statistics: Sequence[Statistic] = STATISTICS,
) -> VitalsState:
    """Folds one gradient into the running statistics.

    For every element, with ``d = decay`` and ``g`` the gradient, the built-in statistics do:

    * ``grad_mean <- d * grad_mean + (1 - d) * g`` and ``grad_sq <- d * grad_sq + (1 - d) * g**2``;
    * a *flip* happens when ``sign(g) != 0``, ``last_sign != 0`` and ``sign(g) != last_sign``;
      ``flip_rate <- d * flip_rate + (1 - d) * flip``; ``last_sign <- sign(g)`` where
      ``sign(g) != 0`` (a zero gradient keeps the previous sign);
    * ``age <- 0`` where ``|params * mask| > weight_threshold`` and ``|g| > grad_threshold``,
      otherwise ``age + 1``, saturating at 65535;
    * each leaf's ``debias <- d * debias``; ``count <- count + 1``.

    Every statistic reads the previous values only. A gradient leaf holding any NaN or Inf
    leaves all of that leaf's statistics unchanged and adds 1 to ``nonfinite``; other leaves and
    later steps are unaffected. (The check is ``isfinite(sum(g))``, one reduction per leaf. It
    also skips a finite leaf whose sum overflows, which needs an element beyond
    ``float_max / leaf.size``, whose square would already overflow ``grad_sq``.)

    Cost: one fused elementwise loop per statistic of each leaf plus that reduction. XLA:CPU
    does not fuse sibling loops, so each loop re-reads the gradient; call it every few steps
    where that matters (``python -m benchmarks.step_overhead`` measures it).

    Args:
      state: the current statistics, from ``init`` or a previous ``update``.
      params: the parameters (the weights the gradient was taken at, or the updated ones).
      grads: the gradient, a pytree with the structure and shapes of ``params``.
      masks: ``None`` (nothing pruned) or a pytree with the structure of ``params`` whose leaves
        are bool arrays of the param's shape or a scalar ``True`` ("this leaf is not pruned").
        The effective weight is ``params * mask``.
      decay: EMA decay in ``[0, 1)``; may be a traced scalar and may change between calls.
      weight_threshold: an effective weight with absolute value at most this is inert.
      grad_threshold: a gradient with absolute value at most this is inert.
      statistics: the table the state was made with by ``init`` (static).

    Returns:
      The new ``VitalsState``.

    Raises:
      ValueError: if ``grads``, ``masks`` or the state do not match the structure or shapes of
        ``params`` (the message names the leaf), or the state does not hold the table's
        statistics.
      TypeError: if a leaf of ``grads`` is not floating.
    """
    _check_inputs(state, params, grads, masks, statistics)
    leaf_update = _leaf_update(statistics, jnp.asarray(decay), weight_threshold, grad_threshold)
    return update_leaves(state, params, grads, masks, leaf_update, statistics)


def update_leaves(
    state: VitalsState,
    params: PyTree,
    grads: PyTree,
    masks: PyTree | None,
    leaf_update: Callable[..., tuple[jax.Array, ...]],
    statistics: Sequence[Statistic] = STATISTICS,
) -> VitalsState:
    """The tree walk of :func:`update` around a per-leaf update (inputs are not checked).

    ``leaf_update(*previous, param, grad, mask)``, with ``previous`` the leaf's values of the
    table's statistics in table order (for the default table ``grad_mean, grad_sq, flip_rate,
    last_sign, age, debias``) and ``mask`` ``None`` or the leaf's mask, returns the new values
    in the same order and whether the gradient leaf was finite; ``count`` and ``nonfinite`` are
    advanced here.
    """
    leaves = jax.tree_util.tree_leaves
    treedef = jax.tree_util.tree_structure(params)
    mask_leaves = [None] * treedef.num_leaves if masks is None else leaves(masks)
    names = [s.name for s in statistics]
    columns = [leaves(state.statistic(n)) for n in names]
    outs = [
        leaf_update(*args)
        for args in zip(*columns, leaves(params), leaves(grads), mask_leaves, strict=True)
    ]
    trees = {n: treedef.unflatten([o[i] for o in outs]) for i, n in enumerate(names)}
    skipped = sum((~o[-1]).astype(jnp.int32) for o in outs) if outs else 0
    return _assemble(trees, count=state.count + 1, nonfinite=state.nonfinite + skipped)
