"""Per-parameter signals derived from the running statistics or from one (params, grads) pair.

Every function is pure and elementwise and returns a pytree shaped like the params, so it works
under ``jax.jit`` and ``jax.vmap`` and can be summarised per region by
:mod:`emrakul.vitals.regions`.

* :func:`corrected` - the bias-corrected value of any EMA statistic of the state, by name.
* :func:`grad_mean` - the bias-corrected EMA gradient.
* :func:`fisher` - the empirical Fisher diagonal, the bias-corrected EMA of ``g**2``.
* :func:`gsnr` - the gradient signal-to-noise ratio ``E[g]**2 / Var[g]``.
* :func:`saliency` - SNIP's connection sensitivity ``|w * g|``.
* :func:`magnitude` - ``|w|``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree, check_same_structure
from emrakul.vitals.state import FIELDS, VitalsState
from emrakul.vitals.statistics import stat_dtype

_tmap = jax.tree_util.tree_map


def _correction(debias: jax.Array) -> jax.Array:
    """The scalar ``1 / (1 - debias)``, or 0 for a leaf that was never updated."""
    denom = 1 - debias
    ok = denom > 0
    return jnp.where(ok, 1 / jnp.where(ok, denom, 1), 0)


def _corrected(ema: PyTree, state: VitalsState) -> PyTree:
    def one(x, debias):
        dt = stat_dtype(x.dtype)  # a compact (bfloat16) EMA is corrected in float32
        return x.astype(dt) * _correction(debias).astype(dt)

    return _tmap(one, ema, state.debias)


def corrected(state: VitalsState, name: str) -> PyTree:
    """The bias-corrected value ``ema / (1 - debias)`` of the EMA statistic ``name``.

    The correction is Adam's (Kingma & Ba, 2015): an EMA started at zero underestimates its
    target by the factor ``1 - prod(decays)``. It applies to every EMA of the statistics table,
    built-in (``grad_mean``, ``grad_sq``) or added (``state.extra``). A leaf that has not been
    updated yet (``debias == 1``) gives zeros.

    Args:
      state: running statistics from :func:`emrakul.vitals.update`.
      name: the statistic, a field of the state or a key of ``state.extra``.

    Returns:
      A pytree shaped like the params (the statistic's dtype, at least float32).

    Raises:
      KeyError: if the state holds no statistic ``name``.
      ValueError: if the statistic's structure differs from ``state.debias``.
    """
    ema = state.statistic(name)
    where = f"state.{name}" if name in FIELDS else f"state.extra[{name!r}]"
    check_same_structure(ema, state.debias, where, "state.debias")
    return _corrected(ema, state)


def grad_mean(state: VitalsState) -> PyTree:
    """The bias-corrected EMA of the gradient, ``grad_mean / (1 - debias)``.

    The correction is Adam's (Kingma & Ba, 2015). A leaf that has not been updated yet
    (``debias == 1``) gives zeros.

    Args:
      state: running statistics from :func:`emrakul.vitals.update`.

    Returns:
      A pytree shaped like the params (the statistics' dtype, at least float32).
    """
    return corrected(state, "grad_mean")


def fisher(state: VitalsState) -> PyTree:
    """The empirical Fisher diagonal: the bias-corrected EMA of the squared gradient.

    ``F_ii ~ E[g_i**2]`` over minibatch gradients, the diagonal used by second-order-flavoured
    pruning (e.g. Optimal Brain Damage style criteria) and natural-gradient methods (Martens,
    2014, "New insights and perspectives on the natural gradient method"). Note that the
    *empirical* Fisher, built from gradients of the observed labels, is not the true Fisher and
    can be a poor curvature proxy away from a well-fit optimum (Kunstner, Balles & Hennig, 2019,
    "Limitations of the empirical Fisher approximation for natural gradient descent"); here it
    is a per-parameter signal, not a preconditioner. It is also an EMA of minibatch (not
    per-example) gradients, so it includes the squared mean gradient.

    Args:
      state: running statistics from :func:`emrakul.vitals.update`.

    Returns:
      A non-negative pytree shaped like the params (zeros for a leaf never updated).
    """
    return corrected(state, "grad_sq")


def gsnr(state: VitalsState, eps: float | jax.Array = 1e-6) -> PyTree:
    """The gradient signal-to-noise ratio ``E[g]**2 / Var[g]`` of every parameter.

    GSNR is introduced by Liu et al., 2020, "Understanding Why Neural Networks Generalize Well
    Through GSNR of Parameters" (ICLR), and used as a pruning criterion by Siems et al., 2021,
    "Dynamic Pruning of a Neural Network via Gradient Signal-to-Noise Ratio". Both moments are
    the bias-corrected EMAs of the state, and ``Var[g] = max(E[g**2] - E[g]**2, 0)``.

    The result is always finite. The denominator is ``max(Var[g], eps * E[g]**2) + tiny`` (tiny:
    the smallest normal number of the dtype), so the GSNR is capped at ``1 / eps`` (1e6 by
    default), which a constant gradient (zero variance) reaches, and all-zero statistics give 0.
    In float32, ``E[g**2] - E[g]**2`` cancels catastrophically once the GSNR nears ~1e6, so
    larger values would be rounding noise anyway. Statistics that overflowed (``|E[g]|`` beyond
    ~1e19 in float32) give 0 (NaN) or the cap (Inf) rather than a non-finite value.

    Args:
      state: running statistics from :func:`emrakul.vitals.update`.
      eps: positive relative variance floor; may be traced.

    Returns:
      A pytree shaped like the params with values in ``[0, 1/eps]``.
    """
    check_same_structure(state.grad_mean, state.grad_sq, "state.grad_mean", "state.grad_sq")
    check_same_structure(state.grad_mean, state.debias, "state.grad_mean", "state.debias")

    def one(m, v, debias):
        dt = stat_dtype(m.dtype)
        m, v = m.astype(dt), v.astype(dt)
        scale = _correction(debias).astype(dt)
        mean = m * scale
        signal = mean * mean
        var = jnp.maximum(v * scale - signal, 0)
        e = jnp.asarray(eps, dt)
        r = signal / (jnp.maximum(var, e * signal) + jnp.finfo(dt).tiny)
        return jnp.where(jnp.isnan(r), 0, jnp.minimum(r, 1 / e))

    return _tmap(one, state.grad_mean, state.grad_sq, state.debias)


def saliency(params: PyTree, grads: PyTree) -> PyTree:
    """SNIP's connection sensitivity ``|w * g|`` of every parameter.

    Lee, Ajanthan & Torr, 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity" (ICLR): the first-order estimate of the change of the loss when a weight is
    removed.

    Args:
      params: the weights.
      grads: the gradient of the loss at ``params``; same structure.

    Returns:
      A non-negative pytree shaped like ``params``.

    Raises:
      ValueError: if ``grads`` does not have the structure of ``params``.
    """
    check_same_structure(params, grads, "params", "grads")
    return _tmap(lambda w, g: jnp.abs(w * g), params, grads)


def magnitude(params: PyTree) -> PyTree:
    """Weight magnitude ``|w|``, the classic pruning criterion (Han et al., 2015, "Learning
    both Weights and Connections for Efficient Neural Networks").

    Args:
      params: the weights.

    Returns:
      A non-negative pytree shaped like ``params``.
    """
    return _tmap(jnp.abs, params)
