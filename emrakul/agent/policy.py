"""The Magistrate's action distribution: sampling, the deployed mode, log-probabilities, entropy.

:class:`~emrakul.agent.spaces.PolicyParams` define independent components: a logit-normal
budget per layer, a log-normal Gumbel temperature, a logit-normal regrowth fraction and a
categorical decision per region (:mod:`emrakul.agent.distributions`). Padded layers get the
neutral budget and padded regions ``KEEP``, and both are left out of :func:`log_prob` and
:func:`entropy`, as PPO needs (Schulman et al., 2017, "Proximal policy optimization
algorithms").
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul.agent.distributions import Categorical, LogitNormal, LogNormal
from emrakul.agent.spaces import KEEP, ActionTerms, AgentAction, AgentObs, PolicyParams


class PolicyDistributions(NamedTuple):
    """The per-component distributions built from :class:`PolicyParams`."""

    budget: LogitNormal
    temperature: LogNormal
    regrow: LogitNormal
    region: Categorical


def distributions(policy: PolicyParams) -> PolicyDistributions:
    """The per-component action distributions of :class:`PolicyParams`."""
    return PolicyDistributions(
        budget=LogitNormal(policy.budget_loc, policy.budget_scale),
        temperature=LogNormal(policy.temperature_loc, policy.temperature_scale),
        regrow=LogitNormal(policy.regrow_loc, policy.regrow_scale),
        region=Categorical.from_logits(policy.region_logits),
    )


def sample(key: jax.Array, policy: PolicyParams, obs: AgentObs) -> AgentAction:
    """Samples an action (padded layers get the neutral budget, padded regions ``KEEP``)."""
    dist = distributions(policy)
    k_budget, k_temp, k_regrow, k_region = jax.random.split(key, 4)
    budget = jnp.where(obs.layer_valid, dist.budget.sample(k_budget), dist.budget.median())
    region = jnp.where(obs.region_valid, dist.region.sample(k_region), KEEP)
    return AgentAction(
        budget=budget,
        temperature=dist.temperature.sample(k_temp),
        regrow=dist.regrow.sample(k_regrow),
        region=region.astype(jnp.int32),
    )


def mode(policy: PolicyParams, obs: AgentObs) -> AgentAction:
    """The deterministic action for deployment: medians of the continuous parts, argmax decisions.

    For the squashed Gaussians the median (``sigmoid(loc)``, ``exp(loc)``) is used: the image of
    the latent Gaussian's mode.
    """
    dist = distributions(policy)
    return AgentAction(
        budget=dist.budget.median(),
        temperature=dist.temperature.median(),
        regrow=dist.regrow.median(),
        region=jnp.where(obs.region_valid, dist.region.mode(), KEEP).astype(jnp.int32),
    )


def log_prob_terms(policy: PolicyParams, obs: AgentObs, action: AgentAction) -> ActionTerms:
    """Per-component log-probabilities of ``action``, each summed over valid layers / regions."""
    dist = distributions(policy)
    budget = jnp.where(obs.layer_valid, dist.budget.log_prob(action.budget), 0.0)
    region = jnp.where(obs.region_valid, dist.region.log_prob(action.region), 0.0)
    return ActionTerms(
        budget=jnp.sum(budget),
        temperature=dist.temperature.log_prob(action.temperature),
        regrow=dist.regrow.log_prob(action.regrow),
        region=jnp.sum(region),
    )


def log_prob(policy: PolicyParams, obs: AgentObs, action: AgentAction) -> jax.Array:
    """The joint log-probability of ``action`` (scalar): the Specialist part factorises over
    regions, the budgets over layers; padded layers and regions are left out."""
    return sum(log_prob_terms(policy, obs, action))


def entropy_terms(policy: PolicyParams, obs: AgentObs) -> ActionTerms:
    """Per-component entropies, each summed over valid layers / regions.

    The continuous parts are the exact differential entropies of the squashed values (see
    :mod:`emrakul.agent.distributions`), consistent with :func:`log_prob`. The region term grows
    with the number of regions; weight the terms separately in a loss if that matters.
    """
    dist = distributions(policy)
    budget = jnp.where(obs.layer_valid, dist.budget.entropy(), 0.0)
    region = jnp.where(obs.region_valid, dist.region.entropy(), 0.0)
    return ActionTerms(
        budget=jnp.sum(budget),
        temperature=dist.temperature.entropy(),
        regrow=dist.regrow.entropy(),
        region=jnp.sum(region),
    )


def entropy(policy: PolicyParams, obs: AgentObs) -> jax.Array:
    """The joint entropy (scalar): the sum of :func:`entropy_terms` (components independent)."""
    return sum(entropy_terms(policy, obs))
