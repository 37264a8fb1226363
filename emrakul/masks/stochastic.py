"""Stochastic, differentiable masks: Gumbel-top-k subsets and Gumbel-softmax gates.

* :func:`gumbel_topk` samples a subset of exactly ``k`` entries from the Plackett-Luce
  distribution with weights ``exp(logits)`` (sampling without replacement by the Gumbel-top-k
  trick; Vieira 2014, Kool et al. 2019 "Stochastic Beams and Where to Find Them"). The forward
  value is the hard subset; gradients flow through a relaxed top-k (straight-through), as in
  Xie & Ermon 2019, "Reparameterizable Subset Sampling via Continuous Relaxations", and
  Li et al. 2021, "Differentiable Subset Pruning of Transformer Heads".
* :func:`gumbel_softmax_mask` draws independent keep/drop gates with the binary
  Gumbel-softmax / concrete straight-through estimator (Jang et al. 2017; Maddison et al. 2017).

The relaxed top-k used for the gradient is ``sigmoid((z - tau) / temperature)`` with ``tau``
chosen so that the relaxed mask sums to ``k``: the solution of the binary-entropy-regularised
linear relaxation of top-k. ``tau`` is found by bisection and differentiated implicitly, so the
gradient is exact for that relaxation and preserves the budget (it sums to zero over entries).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emrakul.masks.topk import _check_k, topk_mask

_TAU_ITERS = 60


def _check_temperature(temperature) -> jax.Array:
    if not isinstance(temperature, jax.core.Tracer) and float(temperature) <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return jnp.asarray(temperature, jnp.float32)


def _check_logits(logits) -> jax.Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    return logits


def soft_topk(z: jax.Array, k, temperature) -> jax.Array:
    """Relaxed top-k: ``sigmoid((z - tau) / temperature)`` with ``tau`` such that it sums to ``k``.

    This maximises ``<z, y> + temperature * sum(H(y_i))`` over ``0 <= y <= 1, sum(y) = k``
    (``H`` the binary entropy). ``tau`` is found by bisection on stop-gradient values and
    differentiated implicitly: ``d tau / d z_j = s'_j / sum_i s'_i``.

    Args:
      z: floating scores (any shape; the budget counts over all entries).
      k: the budget (integer, may be traced).
      temperature: positive float (may be traced).

    Returns:
      An array of ``z.shape`` in [0, 1] summing to ``k`` (up to bisection tolerance).
    """
    z = _check_logits(z)
    t = _check_temperature(temperature)
    k = _check_k(k, z.size)
    flat = z.reshape(-1).astype(jnp.float32)
    zs = jax.lax.stop_gradient(flat)
    kf = k.astype(jnp.float32)
    finite = jnp.where(jnp.isfinite(zs), zs, 0.0)
    lo = jnp.min(finite) - 40.0 * t  # sum(sigmoid) ~= n at lo, ~= 0 at hi
    hi = jnp.max(finite) + 40.0 * t

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        over = jnp.sum(jax.nn.sigmoid((zs - mid) / t)) > kf
        return jnp.where(over, mid, lo), jnp.where(over, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _TAU_ITERS, body, (lo, hi))
    tau = 0.5 * (lo + hi)
    s = jax.nn.sigmoid((zs - tau) / t)
    ds = s * (1.0 - s) / t
    w = ds / jnp.maximum(jnp.sum(ds), 1e-30)
    # Forward value tau; gradient d tau / dz = w (implicit function theorem).
    tau = tau + jnp.sum(jax.lax.stop_gradient(w) * (flat - zs))
    return jax.nn.sigmoid((flat - tau) / t).reshape(z.shape).astype(z.dtype)


def gumbel_topk(key: jax.Array, logits: jax.Array, k, temperature) -> jax.Array:
    """Samples a subset of exactly ``k`` entries, hard forward, relaxed straight-through backward.

    The subset is the top-k of ``logits + Gumbel noise``, which is a sample without replacement
    from the Plackett-Luce distribution with weights ``exp(logits)`` (Kool et al. 2019): each
    entry's inclusion probability is the Plackett-Luce one. The gradient with respect to
    ``logits`` is that of :func:`soft_topk` of the perturbed logits (Xie & Ermon 2019; Li et al.
    2021 "Differentiable Subset Pruning").

    Args:
      key: a PRNG key.
      logits: floating array of any shape; the subset is drawn over all its entries.
      k: subset size (integer in ``[0, logits.size]``, may be traced).
      temperature: relaxation temperature (> 0, may be traced); only affects gradients.

    Returns:
      A float array of ``logits.shape`` with exactly ``k`` ones and zeros elsewhere.
    """
    logits = _check_logits(logits)
    z = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
    hard = topk_mask(jax.lax.stop_gradient(z), k).astype(logits.dtype)
    soft = soft_topk(z, k, temperature)
    return hard + (soft - jax.lax.stop_gradient(soft))  # forward value exactly hard


def gumbel_softmax_mask(key: jax.Array, logits: jax.Array, temperature) -> jax.Array:
    """Independent binary keep/drop gates with the straight-through Gumbel-softmax estimator.

    Each entry is kept with probability ``sigmoid(logits)``: the gate is
    ``1[logits + L > 0]`` with ``L`` logistic noise (the difference of two Gumbels), and its
    gradient is that of the binary concrete relaxation ``sigmoid((logits + L) / temperature)``
    (Jang et al. 2017, "Categorical Reparameterization with Gumbel-Softmax"; Maddison et al.
    2017, "The Concrete Distribution").

    Args:
      key: a PRNG key.
      logits: floating array, the log-odds of keeping each entry.
      temperature: relaxation temperature (> 0, may be traced).

    Returns:
      A float array of ``logits.shape`` with values in {0, 1}.
    """
    logits = _check_logits(logits)
    t = _check_temperature(temperature)
    noise = jax.random.logistic(key, logits.shape, logits.dtype)
    soft = jax.nn.sigmoid((logits + noise) / t.astype(logits.dtype))
    hard = (logits + noise > 0).astype(logits.dtype)
    return hard + (soft - jax.lax.stop_gradient(soft))  # forward value exactly hard
