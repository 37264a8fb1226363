"""PPO building blocks for the Magistrate, on rlax and optax.

Proximal Policy Optimization (Schulman, Wolski, Dhariwal, Radford & Klimov, 2017,
https://arxiv.org/abs/1707.06347) with generalized advantage estimation (Schulman, Moritz,
Levine, Jordan & Abbeel, 2016, https://arxiv.org/abs/1506.02438):

* :func:`gae` - advantages and value targets of a rollout ``[T, ...]`` with
  :func:`rlax.truncated_generalized_advantage_estimation`, vmapped over the batch axes;
* :func:`ppo_loss` - the clipped surrogate (:func:`rlax.clipped_surrogate_pg_loss`), an
  optionally clipped value loss and an entropy bonus, with the usual diagnostics;
* :func:`minibatches` - a shuffled split of a flat batch into ``[num_minibatches, ...]`` for
  :func:`jax.lax.scan`; :func:`flatten_leading` merges the rollout's ``[T, B]`` axes first.

Conventions follow rlax: ``rewards[t]`` and ``discounts[t]`` belong to the transition from
``s_t`` to ``s_{t+1}``, and ``discounts[t] = γ · (1 − done_t)`` where ``done_t`` says that this
transition ended the episode (so nothing is bootstrapped across an episode boundary). All
functions are pure and jit/vmap-able; hyperparameters may be traced.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import rlax

Scalar = float | jax.Array
PyTree = Any


def gae(
    rewards: jax.Array,
    values: jax.Array,
    discounts: jax.Array,
    lambda_: Scalar | jax.Array,
    bootstrap_value: jax.Array | None = None,
    stop_target_gradients: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimation over a rollout (Schulman et al., 2016).

    ``δ_t = r_t + γ_t · V(s_{t+1}) − V(s_t)`` and ``Â_t = δ_t + γ_t · λ · Â_{t+1}`` (backwards,
    truncated at ``T``); the value targets are ``Â_t + V(s_t)`` (the λ-returns).

    Args:
      rewards: float [T, *B], reward of each transition.
      values: float [T + 1, *B], ``V(s_0..s_T)``; or, with ``bootstrap_value``, float [T, *B]
        holding ``V(s_0..s_{T-1})``.
      discounts: float [T, *B], ``γ · (1 − done)`` of each transition.
      lambda_: the GAE λ, a scalar or float [T, *B].
      bootstrap_value: optional float [*B], ``V(s_T)``.
      stop_target_gradients: stop gradients flowing into the advantages (and targets).

    Returns:
      ``(advantages, returns)``, both float [T, *B].
    """
    if bootstrap_value is not None:
        chex.assert_equal_shape([rewards, values])
        chex.assert_shape(bootstrap_value, rewards.shape[1:])
        values = jnp.concatenate([values, bootstrap_value[None]], axis=0)
    chex.assert_rank(rewards, {1, 2, 3, 4, 5, 6})
    chex.assert_equal_shape([rewards, discounts])
    chex.assert_shape(values, (rewards.shape[0] + 1, *rewards.shape[1:]))
    chex.assert_type([rewards, values, discounts], float)

    t = rewards.shape[0]
    batch_shape = rewards.shape[1:]
    n = math.prod(batch_shape)
    lambdas = jnp.broadcast_to(jnp.asarray(lambda_, rewards.dtype), rewards.shape)

    def flat(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], n)

    adv = jax.vmap(
        lambda r, d, lam, v: rlax.truncated_generalized_advantage_estimation(
            r, d, lam, v, stop_target_gradients
        ),
        in_axes=1,
        out_axes=1,
    )(flat(rewards), flat(discounts), flat(lambdas), flat(values))
    adv = adv.reshape(t, *batch_shape)
    v_t = values[:-1]
    if stop_target_gradients:
        v_t = jax.lax.stop_gradient(v_t)
    return adv, adv + v_t


class PPOMetrics(NamedTuple):
    """Diagnostics of one PPO loss evaluation (float32 scalars).

    Attributes:
      loss: the total loss ``policy + value_coef · value − entropy_coef · entropy``.
      policy_loss: the clipped surrogate loss.
      value_loss: the (clipped) value loss ``0.5 · mean((V − R)²)``.
      entropy: the mean policy entropy.
      approx_kl: ``mean((ρ − 1) − log ρ)``, an unbiased, nonnegative estimate of
        ``KL(π_old ‖ π_new)`` (Schulman's "k3" estimator).
      clip_fraction: the fraction of samples whose ratio lies outside ``[1 − ε, 1 + ε]``.
    """

    loss: jax.Array
    policy_loss: jax.Array
    value_loss: jax.Array
    entropy: jax.Array
    approx_kl: jax.Array
    clip_fraction: jax.Array


def _masked_mean(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _check_loss_inputs(
    arrays: list[jax.Array], mask: jax.Array | None, old_values: jax.Array | None
) -> None:
    """Shape and dtype asserts of :func:`ppo_loss`'s per-sample inputs."""
    chex.assert_rank(arrays[0], {1, 2, 3, 4})
    chex.assert_equal_shape(arrays)
    chex.assert_type(arrays, float)
    if mask is not None:
        chex.assert_equal_shape([arrays[0], mask])
    if old_values is not None:
        chex.assert_equal_shape([arrays[0], old_values])
        chex.assert_type(old_values, float)


def _standardized(adv: jax.Array, w: jax.Array) -> jax.Array:
    """``(adv - mean) / (std + 1e-8)`` over the weighted samples."""
    mean = _masked_mean(adv, w)
    std = jnp.sqrt(_masked_mean((adv - mean) ** 2, w))
    return (adv - mean) / (std + 1e-8)


def _policy_loss(ratio: jax.Array, adv: jax.Array, w: jax.Array, clip_eps: Scalar) -> jax.Array:
    """The clipped surrogate loss, the weighted mean over samples."""
    # rlax averages over its rank-1 inputs; apply it per sample so padding can be masked out.
    per_sample = jax.vmap(lambda r, a: rlax.clipped_surrogate_pg_loss(r[None], a[None], clip_eps))(
        ratio, adv
    )
    return _masked_mean(per_sample, w)


def _ratio_diagnostics(
    ratio: jax.Array, log_ratio: jax.Array, w: jax.Array, clip_eps: Scalar
) -> tuple[jax.Array, jax.Array]:
    """``(approx_kl, clip_fraction)`` of the importance ratios (no gradient)."""
    ratio_c = jax.lax.stop_gradient(ratio)
    log_ratio_c = jax.lax.stop_gradient(log_ratio)
    approx_kl = _masked_mean((ratio_c - 1.0) - log_ratio_c, w)
    clip_fraction = _masked_mean((jnp.abs(ratio_c - 1.0) > clip_eps).astype(w.dtype), w)
    return approx_kl, clip_fraction


def _value_loss(
    v: jax.Array, ret: jax.Array, w: jax.Array, v_old: jax.Array | None, eps_v: Scalar
) -> jax.Array:
    """``0.5 * mean((V - R)**2)``, pessimistically clipped around ``v_old`` when given."""
    value_err = (v - ret) ** 2
    if v_old is not None:
        v_clipped = v_old + jnp.clip(v - v_old, -eps_v, eps_v)
        value_err = jnp.maximum(value_err, (v_clipped - ret) ** 2)
    return 0.5 * _masked_mean(value_err, w)


def ppo_loss(
    new_log_prob: jax.Array,
    old_log_prob: jax.Array,
    advantages: jax.Array,
    values: jax.Array,
    returns: jax.Array,
    entropy: jax.Array,
    clip_eps: Scalar,
    value_coef: Scalar,
    entropy_coef: Scalar,
    normalize_advantages: bool = True,
    mask: jax.Array | None = None,
    old_values: jax.Array | None = None,
    value_clip_eps: Scalar | None = None,
) -> tuple[jax.Array, PPOMetrics]:
    """The PPO-clip loss (Schulman et al., 2017, eq. 9, with the signs of a loss to minimise).

    With ``ρ = exp(new_log_prob − old_log_prob)`` and advantages ``Â`` (standardised over the
    batch when ``normalize_advantages``: ``(Â − mean) / (std + 1e-8)``, masked)::

        policy  = −mean(min(ρ·Â, clip(ρ, 1 − ε, 1 + ε)·Â))      (rlax.clipped_surrogate_pg_loss)
        value   = 0.5 · mean((V − R)²), or with old_values
                  0.5 · mean(max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²))
        loss    = policy + value_coef · value − entropy_coef · mean(entropy)

    Means are over the (masked) samples. The advantages and returns are treated as constants.

    Args:
      new_log_prob: float [*N], log π_θ(a|s) of the taken actions under the current policy.
      old_log_prob: float [*N], their log-probabilities under the behaviour policy.
      advantages: float [*N], e.g. from :func:`gae`.
      values: float [*N], the critic's current predictions ``V(s)``.
      returns: float [*N], the value targets ``R``.
      entropy: float [*N], the current policy's entropy at each state.
      clip_eps: the ratio clip ε.
      value_coef: weight of the value loss.
      entropy_coef: weight of the entropy bonus.
      normalize_advantages: standardise the advantages over the batch (static Python bool).
      mask: optional [*N], nonzero for valid samples (padding excluded from every mean).
      old_values: optional float [*N], the behaviour critic's predictions; enables value
        clipping.
      value_clip_eps: ε_v of the value clipping; defaults to ``clip_eps``.

    Returns:
      ``(loss, metrics)``: the float32 scalar loss and its :class:`PPOMetrics`.
    """
    _check_loss_inputs(
        [new_log_prob, old_log_prob, advantages, values, returns, entropy], mask, old_values
    )

    def flat(x: jax.Array) -> jax.Array:
        return jnp.reshape(x, (-1,))

    w = jnp.ones_like(flat(new_log_prob)) if mask is None else flat(mask != 0).astype(jnp.float32)
    w = w.astype(new_log_prob.dtype)
    log_ratio = flat(new_log_prob) - flat(old_log_prob)
    ratio = jnp.exp(log_ratio)
    adv = jax.lax.stop_gradient(flat(advantages))
    if normalize_advantages:
        adv = _standardized(adv, w)

    policy_loss = _policy_loss(ratio, adv, w, clip_eps)
    eps_v = clip_eps if value_clip_eps is None else value_clip_eps
    old_v = None if old_values is None else flat(old_values)
    value_loss = _value_loss(flat(values), jax.lax.stop_gradient(flat(returns)), w, old_v, eps_v)
    mean_entropy = _masked_mean(flat(entropy), w)
    loss = policy_loss + value_coef * value_loss - entropy_coef * mean_entropy

    approx_kl, clip_fraction = _ratio_diagnostics(ratio, log_ratio, w, clip_eps)
    metrics = PPOMetrics(loss, policy_loss, value_loss, mean_entropy, approx_kl, clip_fraction)
    return loss, metrics


def flatten_leading(batch: PyTree, num_axes: int = 2) -> PyTree:
    """Merges the first ``num_axes`` axes of every leaf (e.g. a rollout's ``[T, B]``).

    Args:
      batch: pytree of arrays sharing their first ``num_axes`` dimensions.
      num_axes: how many leading axes to merge.

    Returns:
      The pytree with leaves of shape ``[prod(leading), ...]``.
    """
    chex.assert_equal_shape_prefix(jax.tree_util.tree_leaves(batch), num_axes)
    return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[num_axes:]), batch)


def minibatches(key: jax.Array, batch: PyTree, num_minibatches: int) -> PyTree:
    """Shuffles a batch along axis 0 and splits it into ``num_minibatches`` equal parts.

    One permutation is shared by all leaves, so samples stay aligned. The result is ready for
    ``jax.lax.scan(update, state, minibatches(key, batch, m))``.

    Args:
      key: PRNG key of the shuffle.
      batch: pytree of arrays with a common leading dimension ``N``.
      num_minibatches: number of minibatches (a Python int dividing ``N``).

    Returns:
      The pytree with leaves of shape ``[num_minibatches, N // num_minibatches, ...]``.

    Raises:
      ValueError: if ``num_minibatches`` does not divide ``N``.
    """
    leaves = jax.tree_util.tree_leaves(batch)
    chex.assert_equal_shape_prefix(leaves, 1)
    n = leaves[0].shape[0]
    if num_minibatches <= 0 or n % num_minibatches:
        raise ValueError(
            f"num_minibatches={num_minibatches} must be positive and divide the batch size {n}"
        )
    perm = jax.random.permutation(key, n)
    return jax.tree_util.tree_map(
        lambda x: jnp.take(x, perm, axis=0).reshape(num_minibatches, -1, *x.shape[1:]), batch
    )
