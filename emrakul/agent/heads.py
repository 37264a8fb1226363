"""The Magistrate's heads: Surgeon General budgets, Specialist decisions, the critic.

* :class:`SurgeonGeneral` - per-layer logit-normal budgets (weights shared across layers, from
  each layer's embedding and the global state), a log-normal Gumbel temperature and a
  logit-normal regrowth fraction (from the global state).
* :class:`Specialist` - shared across regions: ``[region embedding, its layer's embedding,
  global state] -> 4`` logits over :data:`~emrakul.agent.spaces.DECISIONS` = (keep, sedate,
  wake, lyse).
* :class:`Critic` - a centralised value MLP on the global state, used only in training
  (actor-critic PPO, Schulman et al., 2017, "Proximal policy optimization algorithms").

Neutral initialisation: the output layers of the actor heads have small weights (lecun-normal
times ``head_init_scale = 0.01``, cf. Andrychowicz et al., 2021, "What matters in on-policy
RL") and biases that encode a neutral policy: budget median ``init_budget = 0.5`` (the env reads
0.5 as "follow gradual magnitude pruning", so the untrained policy *is* GMP), ``keep`` logit
``+keep_bias`` above the others, temperature and regrowth medians ``init_temperature`` /
``init_regrow``. All initialisers are QR-free (no orthogonal init, whose batched LAPACK calls
can deadlock XLA:CPU under jit(vmap)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from emrakul.agent.encoder import tanh_mlp
from emrakul.agent.spaces import NUM_DECISIONS

LOG_SCALE_MIN, LOG_SCALE_MAX = -5.0, 1.0
"""Bounds on the log standard deviation (latent space) of the continuous actions."""


def _head_init(scale: float) -> Callable:
    if scale == 0:
        return nn.initializers.zeros_init()
    return nn.initializers.variance_scaling(scale**2, "fan_in", "truncated_normal")


def _const_init(values: tuple[float, ...]) -> Callable:
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(values, dtype).reshape(shape)


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"expected a probability in (0, 1), got {p}")
    return math.log(p) - math.log1p(-p)


def _scale_from_log(raw: jax.Array) -> jax.Array:
    return jnp.exp(jnp.clip(raw, LOG_SCALE_MIN, LOG_SCALE_MAX))


class SurgeonGeneral(nn.Module):
    """Per-layer budgets (shared weights across layers), temperature and regrowth.

    Attributes:
      hidden_dim: hidden width.
      init_budget: the budget median at initialisation (0.5: no correction to GMP).
      init_budget_std: the logit-space standard deviation at initialisation.
      init_temperature: the temperature median at initialisation.
      init_temperature_std: the standard deviation of ``log temperature`` at initialisation.
      init_regrow: the regrowth-fraction median at initialisation.
      init_regrow_std: its logit-space standard deviation at initialisation.
      head_init_scale: output-layer weight scale (relative to lecun-normal).
    """

    hidden_dim: int = 64
    init_budget: float = 0.5
    init_budget_std: float = 0.5
    init_temperature: float = 1.0
    init_temperature_std: float = 0.3
    init_regrow: float = 0.5
    init_regrow_std: float = 0.5
    head_init_scale: float = 0.01

    @nn.compact
    def __call__(
        self, layer_emb: jax.Array, global_state: jax.Array, layer_valid: jax.Array
    ) -> tuple[jax.Array, ...]:
        num_layers = layer_emb.shape[0]
        budget_bias = (_logit(self.init_budget), math.log(self.init_budget_std))
        x = jnp.concatenate(
            [layer_emb, jnp.broadcast_to(global_state, (num_layers, global_state.shape[0]))], 1
        )
        x = nn.tanh(nn.Dense(self.hidden_dim, name="budget_hidden")(x))
        out = nn.Dense(
            2,
            kernel_init=_head_init(self.head_init_scale),
            bias_init=_const_init(budget_bias),
            name="budget_out",
        )(x)
        budget_loc = jnp.where(layer_valid, out[:, 0], budget_bias[0])
        budget_scale = jnp.where(layer_valid, _scale_from_log(out[:, 1]), self.init_budget_std)

        bias = (
            math.log(self.init_temperature),
            math.log(self.init_temperature_std),
            _logit(self.init_regrow),
            math.log(self.init_regrow_std),
        )
        y = nn.tanh(nn.Dense(self.hidden_dim, name="global_hidden")(global_state))
        out = nn.Dense(
            4,
            kernel_init=_head_init(self.head_init_scale),
            bias_init=_const_init(bias),
            name="global_out",
        )(y)
        return (
            budget_loc,
            budget_scale,
            out[0],
            _scale_from_log(out[1]),
            out[2],
            _scale_from_log(out[3]),
        )


class Specialist(nn.Module):
    """Per-region decision logits, one policy shared by every region.

    Attributes:
      hidden_dim: hidden width.
      keep_bias: initial logit advantage of ``KEEP`` over the other decisions.
      head_init_scale: output-layer weight scale (relative to lecun-normal).
    """

    hidden_dim: int = 64
    keep_bias: float = 3.0
    head_init_scale: float = 0.01

    @nn.compact
    def __call__(
        self, region_emb: jax.Array, region_layer_emb: jax.Array, global_state: jax.Array
    ) -> jax.Array:
        rows = region_emb.shape[0]
        g = jnp.broadcast_to(global_state, (rows, global_state.shape[0]))
        x = jnp.concatenate([region_emb, region_layer_emb, g], axis=1)
        x = nn.tanh(nn.Dense(self.hidden_dim, name="hidden")(x))
        bias = (self.keep_bias,) + (0.0,) * (NUM_DECISIONS - 1)
        return nn.Dense(
            NUM_DECISIONS,
            kernel_init=_head_init(self.head_init_scale),
            bias_init=_const_init(bias),
            name="out",
        )(x)


class Critic(nn.Module):
    """The centralised value function: an MLP on the global state -> scalar.

    Attributes:
      hidden_dim: hidden width.
      num_layers: number of hidden layers.
    """

    hidden_dim: int = 64
    num_layers: int = 2

    @nn.compact
    def __call__(self, global_state: jax.Array) -> jax.Array:
        return tanh_mlp(global_state, self.hidden_dim, self.num_layers, 1)[0]
