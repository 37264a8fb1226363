"""The Magistrate's plan network: an observation of a host in, a raw surgery plan out.

* Phage: one small MLP shared by every region (output unit) embeds its normalised vital signs.
* Layers: each layer's node is the mean embedding of its regions, its share of the regions,
  depth, first / last flags and its static size features (:func:`emrakul.agent.features.
  layer_features`), refined by message passing along the layer chain (Gilmer et al. 2017).
* Magistrate: the global state pools regions and layers with the global features.
* Surgeon General: a head shared by the layers gives each layer's allocation logit, score mix,
  decay, hysteresis, churn and regrowth; a global head gives the schedule shape, window shifts
  and Gumbel temperature. Specialists: a head shared by the regions gives each region's rank
  bias. A critic head (used by PPO only) gives a value.

Every head's output layer starts at zero, so an untrained network outputs the zero plan: the
neutral heuristic, exactly (:mod:`emrakul.controllers.plan_space`). Heads are shared across
layers and regions, so one network acts on hosts of any depth and width (padding is ignored).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from emrakul.agent.encoder import Phage, _layer_nodes, _masked_mean, _message_passing, _symlog
from emrakul.agent.spaces import AgentObs, check_obs
from emrakul.controllers.plan_space import NUM_MIX, SurgeryPlan

LAYER_OUTPUTS = ("alloc", *(f"mix{i}" for i in range(NUM_MIX)), "decay", "hysteresis", "churn",
                 "regrow")  # fmt: skip
GLOBAL_OUTPUTS = ("shape", "start", "end", "temperature")


class PlanOutput(NamedTuple):
    """The network's output for one observation: the raw plan and the critic's value."""

    plan: SurgeryPlan
    value: jax.Array


def _zero_dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.zeros, name=name)


def _layer_plan(out: jax.Array) -> dict[str, jax.Array]:
    """Splits the ``[L, 9]`` layer head into plan fields."""
    return {
        "alloc": out[:, 0],
        "mix": out[:, 1 : 1 + NUM_MIX],
        "decay": out[:, 1 + NUM_MIX],
        "hysteresis": out[:, 2 + NUM_MIX],
        "churn": out[:, 3 + NUM_MIX],
        "regrow": out[:, 4 + NUM_MIX],
    }


class PlanNetwork(nn.Module):
    """Observation -> (raw :class:`~emrakul.controllers.plan_space.SurgeryPlan`, value).

    Attributes:
      embed_dim: region and layer embedding width.
      hidden_dim: hidden width of the Phage and of the global state.
      message_rounds: rounds of message passing along the layer chain.
    """

    embed_dim: int = 16
    hidden_dim: int = 32
    message_rounds: int = 1

    @nn.compact
    def __call__(self, obs: AgentObs) -> PlanOutput:
        check_obs(obs)
        if obs.layers is None:
            raise ValueError("the plan network reads AgentObs.layers (features.observe fills it)")
        valid = obs.region_valid.astype(bool)
        layer_valid = obs.layer_valid.astype(bool)
        feats = _symlog(jnp.where(valid[:, None], jnp.asarray(obs.regions, jnp.float32), 0.0))
        glob = _symlog(jnp.asarray(obs.globals, jnp.float32))
        emb = Phage(self.embed_dim, self.hidden_dim, 1, name="phage")(feats)
        emb = jnp.where(valid[:, None], emb, 0.0)
        node = jnp.concatenate([_layer_nodes(emb, valid, obs.region_layer, layer_valid),
                                jnp.asarray(obs.layers, jnp.float32)], axis=1)  # fmt: skip
        h = jnp.where(layer_valid[:, None], nn.tanh(nn.Dense(self.embed_dim)(node)), 0.0)
        h = _message_passing(h, layer_valid, self.message_rounds)
        g = jnp.concatenate([_masked_mean(emb, valid), _masked_mean(h, layer_valid), glob])
        g = nn.tanh(nn.Dense(self.hidden_dim, name="global")(g))
        num_layers = h.shape[0]
        layer_in = jnp.concatenate([h, jnp.broadcast_to(g, (num_layers, g.shape[0]))], axis=1)
        per_layer = _zero_dense(len(LAYER_OUTPUTS), "surgeon_general_layer")(layer_in)
        per_layer = jnp.where(layer_valid[:, None], per_layer, 0.0)
        glob_out = _zero_dense(len(GLOBAL_OUTPUTS), "surgeon_general_global")(g)
        layer_id = jnp.where(valid, obs.region_layer, 0).astype(jnp.int32)
        region_in = jnp.concatenate([emb, jnp.take(h, layer_id, axis=0, mode="clip")], axis=1)
        bias = _zero_dense(1, "specialist")(region_in)[:, 0]
        plan = SurgeryPlan(**_layer_plan(per_layer), shape=glob_out[0], start=glob_out[1],
                           end=glob_out[2], temperature=glob_out[3],
                           bias=jnp.where(valid, bias, 0.0))  # fmt: skip
        value = nn.Dense(1, name="critic_out")(nn.tanh(nn.Dense(self.hidden_dim, name="critic")(g)))
        return PlanOutput(plan, value[0])
