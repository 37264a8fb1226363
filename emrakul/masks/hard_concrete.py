"""Hard-concrete gates for L0 regularisation (Louizos, Welling & Kingma 2018).

A hard-concrete gate is a binary-concrete sample stretched to ``(gamma, zeta)`` and clipped to
``[0, 1]``, so it takes the exact values 0 and 1 with positive probability while staying
differentiable in ``log_alpha`` in between. The expected L0 norm (number of non-zero gates) has
a closed form, which makes sparsity a differentiable training objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1


def _check(log_alpha, beta, gamma, zeta) -> jax.Array:
    log_alpha = jnp.asarray(log_alpha)
    if not jnp.issubdtype(log_alpha.dtype, jnp.floating):
        raise TypeError(f"log_alpha must have a floating dtype, got {log_alpha.dtype}")
    concrete = [v for v in (beta, gamma, zeta) if not isinstance(v, jax.core.Tracer)]
    if len(concrete) == 3 and not (float(beta) > 0 and float(gamma) < 0 and float(zeta) > 1):
        raise ValueError(f"need beta > 0, gamma < 0 < 1 < zeta; got {beta=}, {gamma=}, {zeta=}")
    return log_alpha


def hard_concrete(
    key: jax.Array, log_alpha: jax.Array, beta=BETA, gamma=GAMMA, zeta=ZETA
) -> jax.Array:
    """Samples hard-concrete gates in [0, 1] with exact 0s and 1s (Louizos et al. 2018, eq. 10).

    ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
    ``z = clip(s * (zeta - gamma) + gamma, 0, 1)``. Differentiable in ``log_alpha``.

    Args:
      key: a PRNG key.
      log_alpha: floating array of gate location parameters.
      beta: temperature (> 0). gamma, zeta: stretch interval, ``gamma < 0``, ``zeta > 1``.
        All three may be traced.

    Returns:
      Gates of ``log_alpha.shape``.
    """
    log_alpha = _check(log_alpha, beta, gamma, zeta)
    eps = jnp.finfo(log_alpha.dtype).eps
    u = jax.random.uniform(key, log_alpha.shape, log_alpha.dtype, eps, 1.0 - eps)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / beta)
    return jnp.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)


def hard_concrete_prob_nonzero(log_alpha: jax.Array, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """Per gate ``P(z > 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))`` (eq. 12)."""
    log_alpha = _check(log_alpha, beta, gamma, zeta)
    return jax.nn.sigmoid(log_alpha - beta * jnp.log(-gamma / zeta))


def hard_concrete_l0(log_alpha: jax.Array, beta=BETA, gamma=GAMMA, zeta=ZETA) -> jax.Array:
    """The expected number of non-zero gates, in closed form (Louizos et al. 2018, eq. 12).

    Args:
      log_alpha: floating array of gate parameters. beta, gamma, zeta: as in
        :func:`hard_concrete`.

    Returns:
      A scalar: ``sum_i sigmoid(log_alpha_i - beta * log(-gamma / zeta))``, differentiable.
    """
    return jnp.sum(hard_concrete_prob_nonzero(log_alpha, beta, gamma, zeta))


def hard_concrete_deterministic(
    log_alpha: jax.Array, beta=BETA, gamma=GAMMA, zeta=ZETA
) -> jax.Array:
    """The test-time gate ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)`` (eq. 13).

    ``beta`` is accepted for a uniform signature; the test-time estimator does not use it.
    """
    log_alpha = _check(log_alpha, beta, gamma, zeta)
    return jnp.clip(jax.nn.sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0)
