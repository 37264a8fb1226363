"""The agent's observation and action spaces: what it sees of a host and what it decides.

One host is observed as an :class:`AgentObs` (per-region features padded to ``R_max`` rows, the
layer of each region, a mask over ``L_max`` layers, global features; see
:mod:`emrakul.agent.features`) and acted on with an :class:`AgentAction`: the Surgeon General's
per-layer budgets, Gumbel temperature and regrowth fraction, and one Specialist decision per
region out of :data:`DECISIONS`. :class:`PolicyParams` parameterise the action distribution
(:mod:`emrakul.agent.policy`). Everything is written for one unbatched host; batch with
``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

KEEP, SEDATE, WAKE, LYSE = 0, 1, 2, 3
DECISIONS: tuple[str, ...] = ("keep", "sedate", "wake", "lyse")
"""The Specialist's per-region decisions, in action-index order."""
NUM_DECISIONS = len(DECISIONS)
MASKED_LOGIT = -1e9
"""The logit of a decision that is not allowed (a padded region may only ``KEEP``)."""


class AgentObs(NamedTuple):
    """One host's observation (batched versions add leading axes).

    Attributes:
      regions: ``float32 [R_max, F]``, region features; rows past the host's regions are padding.
      region_valid: ``bool [R_max]``, which rows are real regions.
      region_layer: ``int32 [R_max]``, the layer index (``< L_max``) of each region; 0 for padding.
      layer_valid: ``bool [L_max]``, which layers are real (the layer graph is the chain of
        valid layers in index order; normally a prefix).
      globals: ``float32 [G]``, global features (progress, sparsity, loss slope, ...).
      layers: ``float32 [L_max, FL]``, static per-layer features (log size, fan-in, fan-out,
        each centred over the host's layers; zero rows for padding), or ``None`` (observations
        made by hand for networks that do not read them).
    """

    regions: jax.Array
    region_valid: jax.Array
    region_layer: jax.Array
    layer_valid: jax.Array
    globals: jax.Array
    layers: jax.Array | None = None


class AgentAction(NamedTuple):
    """One host's action (batched versions add leading axes).

    Attributes:
      budget: ``float32 [L_max]`` in ``(0, 1)``, the Surgeon General's per-layer budget
        correction (0.5 = follow the GMP schedule; the env maps it); padded layers hold the
        neutral value.
      temperature: ``float32`` scalar ``> 0``, the Gumbel temperature.
      regrow: ``float32`` scalar in ``(0, 1)``, the regrowth fraction.
      region: ``int32 [R_max]`` in ``{KEEP, SEDATE, WAKE, LYSE}``; padded regions hold ``KEEP``.
    """

    budget: jax.Array
    temperature: jax.Array
    regrow: jax.Array
    region: jax.Array


class PolicyParams(NamedTuple):
    """The parameters of the action distribution for one observation.

    Attributes:
      budget_loc: ``[L_max]``, logit-space mean of each layer's budget.
      budget_scale: ``[L_max]``, logit-space standard deviation.
      temperature_loc: scalar, mean of ``log temperature``.
      temperature_scale: scalar, standard deviation of ``log temperature``.
      regrow_loc: scalar, logit-space mean of the regrowth fraction.
      regrow_scale: scalar, logit-space standard deviation.
      region_logits: ``[R_max, 4]``, the Specialist's logits (padded rows allow only ``KEEP``).
    """

    budget_loc: jax.Array
    budget_scale: jax.Array
    temperature_loc: jax.Array
    temperature_scale: jax.Array
    regrow_loc: jax.Array
    regrow_scale: jax.Array
    region_logits: jax.Array


class ActionTerms(NamedTuple):
    """Per-component scalars (log-probabilities or entropies), summed over valid entries."""

    budget: jax.Array
    temperature: jax.Array
    regrow: jax.Array
    region: jax.Array


def check_obs(obs: AgentObs) -> tuple[int, int]:
    """Checks the ranks and shapes of one unbatched observation; returns ``(R_max, L_max)``."""
    r_max = obs.regions.shape[0] if obs.regions.ndim == 2 else -1
    ranks = {"regions": 2, "region_valid": 1, "region_layer": 1, "layer_valid": 1, "globals": 1}
    for name, rank in ranks.items():
        if getattr(obs, name).ndim != rank:
            raise ValueError(
                f"AgentObs.{name} must have rank {rank} (one unbatched observation; use jax.vmap "
                f"for batches), got shape {getattr(obs, name).shape}"
            )
    if obs.region_valid.shape[0] != r_max or obs.region_layer.shape[0] != r_max:
        raise ValueError(
            f"region_valid {obs.region_valid.shape} and region_layer {obs.region_layer.shape} "
            f"must have R_max = {r_max} entries like regions {obs.regions.shape}"
        )
    return r_max, obs.layer_valid.shape[0]
