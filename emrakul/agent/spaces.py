"""The agent's observation space: what the Magistrate sees of a host.

One host is observed as an :class:`AgentObs` (per-region features padded to ``R_max`` rows, the
layer of each region, a mask over ``L_max`` layers, global features and static per-layer
features; see :mod:`emrakul.agent.features`). What it decides is a surgery plan
(:mod:`emrakul.controllers.plan_space`), output by :mod:`emrakul.agent.plan_network`.
Everything is written for one unbatched host; batch with ``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax


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
