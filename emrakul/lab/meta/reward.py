"""The trauma-aware reward of the Magistrate, as pure functions over small NamedTuples.

One environment step of :class:`emrakul.lab.meta.env.SurgeryEnv` applies a surgery (a *cut*)
and then runs ``K`` host training steps (one *interval*). The environment measures what
happened in an :class:`IntervalSummary`; :func:`reward` turns it into a scalar reward plus every
term on its own (:class:`RewardTerms`, for logging)::

    R = accuracy + progress + size + oscillation + spike + recovery + health + terminal

with the signed terms

    accuracy    =  α · (acc_after − acc_before)                       (dense shaping)
    progress    =  κ · (Φ(s_after) − Φ(s_before)),  Φ(s) = −|s* − s| / max(s*, η)
    size        = −β · ((1 − μ) · param_fraction + μ · flops_fraction)
    oscillation = −γ · flip_flops
    spike       = −ε · spike_raw
    recovery    =  ε · ρ · spike_raw · recovered
    health      =  δ · gsnr_health
    terminal    =  [terminal] · (ζ · acc_after − ξ · max(0, s* − s_after))

where ``s`` is the sparsity of the prunable weights, ``s*`` the episode's target sparsity, and
the *trauma-aware* spike and its recovery are (``η`` a small constant, ``L`` training losses)::

    spike_raw = [cut_fraction > 0] · max(0, L_cut − L_before) / (L_before + η)
    recovered = clip((L_cut − L_end) / (max(L_cut − L_before, 0) + η), 0, 1)

``L_before`` is the loss right before the cut, ``L_cut`` the loss of the first host step after it
and ``L_end`` the loss at the end of the interval. A cut that does not raise the loss costs
nothing; a cut that raises it pays ``ε`` times the relative jump, and earns back the fraction
``ρ · recovered`` of that penalty where ``recovered`` is the share of the jump the loss has
climbed back down within the ``K`` steps (1 when it is back to its pre-cut level or below).
With ``ρ = 1`` (the default) a fully recovered cut costs nothing at all; a lasting injury keeps
its penalty. This follows the advice of ``DESIGN.md``: a dense reward every interval (accuracy
change, sparsity progress, penalties) plus the terminal accuracy at the final sparsity.

The progress term is potential-based shaping (Ng, Harada & Russell, 1999, "Policy invariance under
reward transformations"): summed over an episode it telescopes to ``κ · (Φ(final) − Φ(start))``,
so it speeds up learning without changing which endpoint is best. Likewise the accuracy term
telescopes to the total accuracy change; the terminal term values the final accuracy itself.

Everything is ``jnp`` arithmetic with no Python branching on values, so :func:`reward` jits and
vmaps over a population of hosts (a batched :class:`IntervalSummary`, or a batched
:class:`RewardConfig` for coefficient sweeps) and coefficients may be traced (changing them does
not recompile). :class:`RewardNormState` with :func:`normalize_update` keeps a running mean and
variance (Welford 1962; Chan, Golub & LeVeque 1979 for batches) to scale rewards for PPO.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Scalar = float | jax.Array
PyTree = Any


class RewardConfig(NamedTuple):
    """Coefficients of the trauma-aware reward (all plain floats or traced scalars).

    Attributes:
      alpha_accuracy: α, weight of the validation-accuracy change over the interval
        (``acc_after − acc_before``, accuracies in ``[0, 1]``).
      kappa_progress: κ, weight of the potential-based sparsity-progress shaping
        ``Φ(s_after) − Φ(s_before)`` with ``Φ(s) = −|s* − s| / s*`` (reaching the target from
        dense earns ``κ`` in total over the episode).
      beta_size: β, per-interval cost of the network's size (a fraction in ``[0, 1]``).
      flops_mix: μ in ``[0, 1]``, what "size" means: ``0`` the remaining parameter fraction,
        ``1`` the remaining FLOPs fraction, in between a mixture.
      gamma_oscillation: γ, cost of mask flip-flops (weights whose mask state reverted this
        interval, as a fraction of the prunable weights).
      epsilon_spike: ε, cost of the relative loss spike right after a cut.
      rho_recovery: ρ in ``[0, 1]``, the share of the spike penalty that a full recovery within
        the interval earns back (``1``: a fully recovered cut is free).
      delta_health: δ, weight of the global GSNR health (see :func:`gsnr_health`).
      zeta_terminal: ζ, weight of the final validation accuracy, paid at the terminal step.
      xi_shortfall: ξ, terminal cost per unit of sparsity short of the target (zero when the
        environment enforces the target, as it should).
      eta: η, small positive constant that keeps the ratios finite.
    """

    alpha_accuracy: Scalar = 1.0
    kappa_progress: Scalar = 0.5
    beta_size: Scalar = 0.01
    flops_mix: Scalar = 0.0
    gamma_oscillation: Scalar = 1.0
    epsilon_spike: Scalar = 0.5
    rho_recovery: Scalar = 1.0
    delta_health: Scalar = 0.01
    zeta_terminal: Scalar = 1.0
    xi_shortfall: Scalar = 1.0
    eta: Scalar = 1e-6


class IntervalSummary(NamedTuple):
    """What the environment measured over one interval: a cut, then ``K`` host steps.

    All fields are float scalars (or arrays of one common batch shape under ``vmap``). The three
    losses are training losses of the host measured with the same estimator (e.g. the minibatch
    loss, or a short running mean of it).

    Attributes:
      val_accuracy_before: validation accuracy right before the cut, in ``[0, 1]``.
      val_accuracy_after: validation accuracy at the end of the interval, in ``[0, 1]``.
      loss_before: training loss right before the cut.
      loss_after_cut: training loss of the first host step after the cut.
      loss_end: training loss at the end of the interval (after ``K`` host steps).
      param_fraction: remaining parameter fraction, ``1 − sparsity`` of the host's weights
        (alive parameters over all parameters the environment counts).
      flops_fraction: remaining FLOPs of a forward pass as a fraction of the dense network's.
      flip_flops: number of mask flip-flops this interval divided by the number of prunable
        weights.
      gsnr_health: global GSNR health at the end of the interval, as computed by
        :func:`gsnr_health` (mean ``log1p`` GSNR over the alive prunable weights).
      cut_fraction: fraction of the alive prunable weights switched off by this cut (0: no cut,
        hence no spike).
      sparsity_before: sparsity of the prunable weights right before the cut.
      sparsity: sparsity of the prunable weights at the end of the interval.
      target_sparsity: the episode's final target sparsity ``s*``.
    """

    val_accuracy_before: Scalar
    val_accuracy_after: Scalar
    loss_before: Scalar
    loss_after_cut: Scalar
    loss_end: Scalar
    param_fraction: Scalar
    flops_fraction: Scalar
    flip_flops: Scalar
    gsnr_health: Scalar
    cut_fraction: Scalar
    sparsity_before: Scalar
    sparsity: Scalar
    target_sparsity: Scalar


class RewardTerms(NamedTuple):
    """Every signed term of the reward (they sum to the total), plus the raw spike quantities.

    Attributes:
      accuracy: ``α · (acc_after − acc_before)``.
      progress: ``κ · (Φ(s_after) − Φ(s_before))``.
      size: ``−β · ((1 − μ) · param_fraction + μ · flops_fraction)``.
      oscillation: ``−γ · flip_flops``.
      spike: ``−ε · spike_raw``.
      recovery: ``ε · ρ · spike_raw · recovered``.
      health: ``δ · gsnr_health``.
      terminal: ``ζ · acc_after − ξ · max(0, s* − s)`` at a terminal step, else 0.
      spike_raw: the relative loss jump after the cut (unweighted, for logging).
      recovered: the share of the jump recovered by the end of the interval, in ``[0, 1]``.
    """

    accuracy: jax.Array
    progress: jax.Array
    size: jax.Array
    oscillation: jax.Array
    spike: jax.Array
    recovery: jax.Array
    health: jax.Array
    terminal: jax.Array
    spike_raw: jax.Array
    recovered: jax.Array


def _f32(x: Scalar) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def loss_spike(
    loss_before: Scalar,
    loss_after_cut: Scalar,
    loss_end: Scalar,
    cut_fraction: Scalar,
    eta: Scalar = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """The trauma of a cut: the relative loss spike and how much of it has healed.

    ``spike = [cut_fraction > 0] · max(0, L_cut − L_before) / (L_before + η)`` and
    ``recovered = clip((L_cut − L_end) / (max(L_cut − L_before, 0) + η), 0, 1)``.

    Args:
      loss_before: training loss right before the cut.
      loss_after_cut: training loss of the first host step after the cut.
      loss_end: training loss at the end of the interval.
      cut_fraction: fraction of alive weights the cut removed (``0``: no cut, no spike).
      eta: small positive constant.

    Returns:
      ``(spike, recovered)``, float32 arrays of the broadcast shape of the inputs.
    """
    before, cut, end, eta = _f32(loss_before), _f32(loss_after_cut), _f32(loss_end), _f32(eta)
    jump = jnp.maximum(cut - before, 0.0)
    spike = jnp.where(_f32(cut_fraction) > 0, jump / (before + eta), 0.0)
    recovered = jnp.clip((cut - end) / (jump + eta), 0.0, 1.0)
    return spike, recovered


def sparsity_potential(sparsity: Scalar, target_sparsity: Scalar, eta: Scalar = 1e-6) -> jax.Array:
    """Shaping potential ``Φ(s) = −|s* − s| / max(s*, η)``: 0 at the target, −1 when dense."""
    target = _f32(target_sparsity)
    return -jnp.abs(target - _f32(sparsity)) / jnp.maximum(target, _f32(eta))


def reward(
    summary: IntervalSummary, config: RewardConfig, terminal: bool | jax.Array
) -> tuple[jax.Array, RewardTerms]:
    """The trauma-aware reward of one interval (see the module docstring for the formula).

    Args:
      summary: what the environment measured over the interval (scalars, or arrays of one batch
        shape).
      config: the coefficients (Python floats or traced scalars).
      terminal: whether this interval ends the episode (a Python or traced bool); only then is
        the terminal term paid.

    Returns:
      ``(total, terms)``: the float32 reward and every signed term, which sum to ``total``.
    """
    s = summary
    c = config
    accuracy = _f32(c.alpha_accuracy) * (_f32(s.val_accuracy_after) - _f32(s.val_accuracy_before))
    progress = _f32(c.kappa_progress) * (
        sparsity_potential(s.sparsity, s.target_sparsity, c.eta)
        - sparsity_potential(s.sparsity_before, s.target_sparsity, c.eta)
    )
    mix = _f32(c.flops_mix)
    size = -_f32(c.beta_size) * (
        (1.0 - mix) * _f32(s.param_fraction) + mix * _f32(s.flops_fraction)
    )
    oscillation = -_f32(c.gamma_oscillation) * _f32(s.flip_flops)
    spike_raw, recovered = loss_spike(
        s.loss_before, s.loss_after_cut, s.loss_end, s.cut_fraction, c.eta
    )
    spike = -_f32(c.epsilon_spike) * spike_raw
    recovery = _f32(c.epsilon_spike) * _f32(c.rho_recovery) * spike_raw * recovered
    health = _f32(c.delta_health) * _f32(s.gsnr_health)
    shortfall = jnp.maximum(_f32(s.target_sparsity) - _f32(s.sparsity), 0.0)
    final = _f32(c.zeta_terminal) * _f32(s.val_accuracy_after) - _f32(c.xi_shortfall) * shortfall
    terminal_term = jnp.where(jnp.asarray(terminal), final, 0.0)
    terms = RewardTerms(
        accuracy=accuracy,
        progress=progress,
        size=size,
        oscillation=oscillation,
        spike=spike,
        recovery=recovery,
        health=health,
        terminal=terminal_term,
        spike_raw=spike_raw,
        recovered=recovered,
    )
    total = accuracy + progress + size + oscillation + spike + recovery + health + terminal_term
    return total, terms


def gsnr_health(gsnr: PyTree, alive: PyTree) -> jax.Array:
    """Global GSNR health: the mean of ``log1p(GSNR)`` over the alive weights.

    The gradient signal-to-noise ratio ``E[g]² / Var[g]`` of a weight (Liu et al., 2020,
    "Understanding Why Neural Networks Generalize Well Through GSNR of Parameters") is high when
    its gradient agrees across samples. ``log1p`` keeps the mean from being dominated by a few
    huge ratios and maps a dead gradient to 0. Only alive weights count: pruning away weights
    with no signal raises the health, pruning away the informative ones lowers it.

    Args:
      gsnr: pytree of per-weight GSNR (e.g. :func:`emrakul.vitals.gsnr`) over the leaves to
        score (the prunable weights).
      alive: pytree of the same structure and shapes, 1/True where a weight is alive.

    Returns:
      A float32 scalar (0 when no weight is alive).
    """
    g_leaves, treedef = jax.tree_util.tree_flatten(gsnr)
    a_leaves = treedef.flatten_up_to(alive)
    total = jnp.zeros((), jnp.float32)
    count = jnp.zeros((), jnp.float32)
    for g, a in zip(g_leaves, a_leaves, strict=True):
        a = jnp.broadcast_to(_f32(a), jnp.shape(g))
        total = total + jnp.sum(jnp.log1p(jnp.maximum(_f32(g), 0.0)) * a)
        count = count + jnp.sum(a)
    return total / jnp.maximum(count, 1.0)


class RewardNormState(NamedTuple):
    """Running statistics for reward normalisation (Welford's algorithm).

    Attributes:
      count: float32 scalar, number of values seen.
      mean: float32 scalar, their mean.
      m2: float32 scalar, the sum of squared deviations from the mean.
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def normalize_init() -> RewardNormState:
    """Empty running statistics."""
    zero = jnp.zeros((), jnp.float32)
    return RewardNormState(count=zero, mean=zero, m2=zero)


def normalize_update(
    state: RewardNormState, values: jax.Array, mask: jax.Array | None = None
) -> RewardNormState:
    """Folds a batch of values (any shape) into the running statistics.

    Batched Welford update (Chan, Golub & LeVeque, 1979): with the batch's count ``n_b``, mean
    ``m_b`` and squared-deviation sum ``M_b`` and ``d = m_b − mean``, ``count' = count + n_b``,
    ``mean' = mean + d · n_b / count'``, ``m2' = m2 + M_b + d² · count · n_b / count'``.

    Args:
      state: the running statistics.
      values: the new values, any shape.
      mask: optional, same shape as ``values``; only entries where it is nonzero count.

    Returns:
      The updated statistics (unchanged if the batch is empty or fully masked).
    """
    x = _f32(values)
    w = jnp.ones_like(x) if mask is None else jnp.broadcast_to(_f32(mask != 0), x.shape)
    n_b = jnp.sum(w)
    mean_b = jnp.sum(w * x) / jnp.maximum(n_b, 1.0)
    m2_b = jnp.sum(w * (x - mean_b) ** 2)
    count = state.count + n_b
    delta = mean_b - state.mean
    safe = jnp.maximum(count, 1.0)
    mean = state.mean + delta * n_b / safe
    m2 = state.m2 + m2_b + delta**2 * state.count * n_b / safe
    return RewardNormState(count=count, mean=mean, m2=m2)


def normalize_std(state: RewardNormState, eps: Scalar = 1e-8) -> jax.Array:
    """The running standard deviation (1 until two values are seen; at least ``eps``)."""
    var = state.m2 / jnp.maximum(state.count, 1.0)
    std = jnp.where(state.count >= 2, jnp.sqrt(jnp.maximum(var, 0.0)), 1.0)
    return jnp.maximum(std, _f32(eps))


def normalize(
    state: RewardNormState, values: jax.Array, center: bool = False, eps: Scalar = 1e-8
) -> jax.Array:
    """Scales values by the running statistics: ``(x − [center]·mean) / std``.

    Args:
      state: the running statistics.
      values: the values to scale, any shape.
      center: also subtract the running mean (a static Python bool). Off by default: for
        rewards, scaling alone keeps the sign of each reward and the meaning of episode ends.
      eps: lower bound on the standard deviation.

    Returns:
      The scaled values, float32, the shape of ``values``.
    """
    x = _f32(values)
    if center:
        x = x - state.mean
    return x / normalize_std(state, eps)
