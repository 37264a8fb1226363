"""Running per-parameter gradient statistics: an optax-style ``init`` / ``update`` pair.

The state keeps, for every parameter, exponential moving averages (EMAs) of the gradient and of
the squared gradient (the raw material of the GSNR and the empirical Fisher, see
:mod:`emrakul.vitals.signals`), an EMA of how often the gradient flips sign, the sign it last had,
and a dormancy age: how many consecutive updates the parameter has been inert, i.e. had a
negligible effective weight or a negligible gradient.

Bias correction follows Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"):
an EMA started at zero is divided by ``1 - prod(decays)``. Instead of assuming a constant decay
(``1 - decay**t``) each leaf keeps the running product of the decays it was actually updated
with (``debias``), so ``decay`` may be a traced value that changes from call to call, and a leaf
whose update was skipped (non-finite gradient) stays correctly corrected.

Both functions are pure and elementwise (one fused expression per output plus a single
finiteness reduction per leaf), so they can run every training step inside the jitted train
step, under ``jax.vmap`` over a batch of runs, and with traced ``decay`` / thresholds without
recompiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree, check_floating, check_same_structure, path_str

AGE_MAX = 65535
"""The largest dormancy age; ``age`` saturates there (it is a ``uint16``)."""


class VitalsState(NamedTuple):
    """Running gradient statistics of every parameter (each field but the last two is a pytree).

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
    """

    grad_mean: PyTree
    grad_sq: PyTree
    flip_rate: PyTree
    last_sign: PyTree
    age: PyTree
    debias: PyTree
    count: jax.Array
    nonfinite: jax.Array


def stat_dtype(dtype: Any) -> jnp.dtype:
    """The dtype of the EMA statistics kept for a leaf of ``dtype``: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def init(params: PyTree) -> VitalsState:
    """Zero statistics for ``params``.

    Args:
      params: a pytree of floating arrays (only shapes and dtypes are used).

    Returns:
      A ``VitalsState`` with zero EMAs, signs and ages, ``debias`` of 1 and zero counters.

    Raises:
      TypeError: if a leaf of ``params`` is not floating (the message names its path).
    """
    check_floating(params, "params")

    def zeros(p):
        return jnp.zeros(jnp.shape(p), stat_dtype(jnp.result_type(p)))

    tmap = jax.tree_util.tree_map
    return VitalsState(
        grad_mean=tmap(zeros, params),
        grad_sq=tmap(zeros, params),
        flip_rate=tmap(zeros, params),
        last_sign=tmap(lambda p: jnp.zeros(jnp.shape(p), jnp.int8), params),
        age=tmap(lambda p: jnp.zeros(jnp.shape(p), jnp.uint16), params),
        debias=tmap(lambda p: jnp.ones((), jnp.float32), params),
        count=jnp.zeros((), jnp.int32),
        nonfinite=jnp.zeros((), jnp.int32),
    )


def _check_inputs(state: VitalsState, params: PyTree, grads: PyTree, masks: PyTree | None):
    """Trace-time checks of structures and shapes (all static, so free under jit)."""
    check_same_structure(params, grads, "params", "grads")
    for field in ("grad_mean", "grad_sq", "flip_rate", "last_sign", "age", "debias"):
        check_same_structure(params, getattr(state, field), "params", f"state.{field}")
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


def _leaf_update(m, v, fr, last, age, debias, w, g, mask, decay, wt, gt):
    """One leaf's update; returns the new fields and whether the gradient leaf was finite."""
    dt = m.dtype
    g = g.astype(dt)
    # One reduction per leaf. A sum is non-finite iff an element is NaN/Inf (NaN and Inf
    # propagate through additions, Inf + -Inf is NaN) or if it overflows, which needs an element
    # beyond float-max / size, whose square already overflows grad_sq: skipping is right then too.
    finite = jnp.isfinite(jnp.sum(g))
    d = decay.astype(dt)
    c = 1 - d
    m_new = jnp.where(finite, d * m + c * g, m)
    v_new = jnp.where(finite, d * v + c * (g * g), v)
    # A flip: g and the last nonzero sign are both nonzero and differ, i.e. g * last < 0.
    fr_new = jnp.where(finite, d * fr + jnp.where(g * last < 0, c, 0), fr)
    last_new = jnp.where(finite & (g != 0), jnp.sign(g).astype(jnp.int8), last)
    w_abs = jnp.abs(w) if mask is None else jnp.where(mask, jnp.abs(w), 0)
    active = (w_abs > wt) & (jnp.abs(g) > gt)
    older = age + (age < AGE_MAX).astype(age.dtype)
    age_new = jnp.where(finite, jnp.where(active, jnp.zeros_like(age), older), age)
    debias_new = jnp.where(finite, debias * decay.astype(debias.dtype), debias)
    return m_new, v_new, fr_new, last_new, age_new, debias_new, finite


def update(
    state: VitalsState,
    params: PyTree,
    grads: PyTree,
    masks: PyTree | None = None,
    decay: float | jax.Array = 0.99,
    weight_threshold: float | jax.Array = 1e-8,
    grad_threshold: float | jax.Array = 1e-8,
) -> VitalsState:
    """Folds one gradient into the running statistics.

    For every element, with ``d = decay`` and ``g`` the gradient:

    * ``grad_mean <- d * grad_mean + (1 - d) * g`` and ``grad_sq <- d * grad_sq + (1 - d) * g**2``;
    * a *flip* happens when ``sign(g) != 0``, ``last_sign != 0`` and ``sign(g) != last_sign``;
      ``flip_rate <- d * flip_rate + (1 - d) * flip``; ``last_sign <- sign(g)`` where
      ``sign(g) != 0`` (a zero gradient keeps the previous sign);
    * ``age <- 0`` where ``|params * mask| > weight_threshold`` and ``|g| > grad_threshold``,
      otherwise ``age + 1``, saturating at 65535;
    * each leaf's ``debias <- d * debias``; ``count <- count + 1``.

    A gradient leaf holding any NaN or Inf leaves all of that leaf's statistics (EMAs,
    ``last_sign``, ``age``, ``debias``) unchanged and adds 1 to ``nonfinite``; other leaves and
    later steps are unaffected. (The check is ``isfinite(sum(g))``, one reduction per leaf. It
    also skips a finite leaf whose sum overflows, which needs an element beyond
    ``float_max / leaf.size``, whose square would already overflow ``grad_sq``.)

    Cost: one fused elementwise loop per output array plus that reduction, per leaf. XLA:CPU
    does not fuse sibling loops, so each loop re-reads the gradient; on a 2-core CPU the update
    adds roughly a tenth to a sixth to a small MLP's masked Adam step (``python -m
    benchmarks.step_overhead``; reading and writing this state once per step, with no
    arithmetic, already adds a fifth to a half of that there). Call it every few steps if
    that is too much.

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

    Returns:
      The new ``VitalsState``.

    Raises:
      ValueError: if ``grads``, ``masks`` or the state do not match the structure or shapes of
        ``params`` (the message names the leaf).
      TypeError: if a leaf of ``grads`` is not floating.
    """
    _check_inputs(state, params, grads, masks)
    decay = jnp.asarray(decay)
    leaf_update = lambda *leaf: _leaf_update(*leaf, decay, weight_threshold, grad_threshold)
    return update_leaves(state, params, grads, masks, leaf_update)


def update_leaves(
    state: VitalsState,
    params: PyTree,
    grads: PyTree,
    masks: PyTree | None,
    leaf_update: Callable[..., tuple[jax.Array, ...]],
) -> VitalsState:
    """The tree walk of :func:`update` around a per-leaf update (inputs are not checked).

    ``leaf_update(grad_mean, grad_sq, flip_rate, last_sign, age, debias, param, grad, mask)``
    (``mask`` is ``None`` or the leaf's mask) returns the six new fields and whether the
    gradient leaf was finite; ``count`` and ``nonfinite`` are advanced here.
    """
    leaves = jax.tree_util.tree_leaves
    treedef = jax.tree_util.tree_structure(params)
    mask_leaves = [None] * treedef.num_leaves if masks is None else leaves(masks)
    outs = [
        leaf_update(*args)
        for args in zip(
            leaves(state.grad_mean),
            leaves(state.grad_sq),
            leaves(state.flip_rate),
            leaves(state.last_sign),
            leaves(state.age),
            leaves(state.debias),
            leaves(params),
            leaves(grads),
            mask_leaves,
            strict=True,
        )
    ]
    fields = [treedef.unflatten([o[i] for o in outs]) for i in range(6)]
    skipped = sum((~o[6]).astype(jnp.int32) for o in outs) if outs else 0
    return VitalsState(
        *fields,
        count=state.count + 1,
        nonfinite=state.nonfinite + skipped,
    )
