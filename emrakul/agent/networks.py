"""The Magistrate's networks: Phage encoder, pooling, message passing, actor heads, critic.

This module holds the actor-critic :class:`Agent` and gathers the public names of the agent's
modules: the spaces (:mod:`~emrakul.agent.spaces`), the encoder (:mod:`~emrakul.agent.encoder`),
the heads (:mod:`~emrakul.agent.heads`) and the action distribution
(:mod:`~emrakul.agent.policy`).

The agent observes one host through :class:`AgentObs`: the per-region feature matrix of
:func:`emrakul.vitals.regions.summarize`, padded to ``R_max`` rows with a validity mask, the
layer of each region, a validity mask over ``L_max`` layers, and a vector of global features.
Every module is written for one unbatched observation; batch with ``jax.vmap`` (e.g.
``jax.vmap(agent.apply, in_axes=(None, 0))``).

Architecture (``D = embed_dim``, ``H = hidden_dim``):

* :class:`Phage` - one MLP applied to every region's feature row (weights shared across
  regions) -> region embeddings ``[R_max, D]``.
* :class:`Magistrate` - masked mean pooling and multi-head attention pooling with a learned
  query (Vaswani et al., 2017, "Attention is all you need"; softmax over the valid regions only)
  of the region embeddings; per-layer embeddings ``[L_max, D]`` (masked segment mean of region
  embeddings by layer, plus the layer's relative depth and share of regions) refined by a few
  rounds of message passing along the layer chain (Gilmer et al., 2017, "Neural message passing
  for quantum chemistry"; layer ``i`` receives direction-specific messages from ``i - 1`` and
  ``i + 1``); these and the global features are mixed into a global state ``[H]``.
* :class:`SurgeonGeneral` - per-layer logit-normal budgets (weights shared across layers, from
  each layer's embedding and the global state), a log-normal Gumbel temperature and a
  logit-normal regrowth fraction (from the global state).
* :class:`Specialist` - shared across regions: ``[region embedding, its layer's embedding,
  global state] -> 4`` logits over :data:`DECISIONS` = (keep, sedate, wake, lyse).
* :class:`Critic` - a centralised value MLP on the global state, used only in training
  (actor-critic PPO, Schulman et al., 2017, "Proximal policy optimization algorithms");
  :meth:`Agent.actor` runs without it (and without its parameters).

Neutral initialisation: the output layers of the heads have small weights (lecun-normal times
``head_init_scale = 0.01``, cf. Andrychowicz et al., 2021, "What matters in on-policy RL") and
biases that encode a neutral policy: budget median ``init_budget = 0.5`` (the env reads 0.5 as
"follow gradual magnitude pruning", so the untrained policy *is* GMP), ``keep`` logit
``+keep_bias = +3`` above the others (keep with probability ~0.87 when sampled, always in
:func:`mode`), temperature and regrowth medians ``init_temperature`` / ``init_regrow``.

Padded regions and layers never influence anything: their features are replaced by zeros before
the Phage (so even NaN padding is harmless), they are excluded from every pooling, their
decision is forced to ``keep`` (probability 1) and their budget to the neutral median, and they
are left out of :func:`log_prob` and :func:`entropy`. The cost is ``O(R_max D H + L_max H^2)``:
it depends on the number of regions, never on the host's parameter count. All initialisers are
QR-free (no orthogonal init, whose batched LAPACK calls can deadlock XLA:CPU under jit(vmap)).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from emrakul.agent.encoder import AttentionPool, Magistrate, MagistrateState, Phage
from emrakul.agent.heads import LOG_SCALE_MAX, LOG_SCALE_MIN, Critic, Specialist, SurgeonGeneral
from emrakul.agent.policy import (
    PolicyDistributions,
    distributions,
    entropy,
    entropy_terms,
    log_prob,
    log_prob_terms,
    mode,
    sample,
)
from emrakul.agent.spaces import (
    DECISIONS,
    KEEP,
    LYSE,
    MASKED_LOGIT,
    NUM_DECISIONS,
    SEDATE,
    WAKE,
    ActionTerms,
    AgentAction,
    AgentObs,
    PolicyParams,
    check_obs,
)

__all__ = [
    "DECISIONS",
    "KEEP",
    "LOG_SCALE_MAX",
    "LOG_SCALE_MIN",
    "LYSE",
    "NUM_DECISIONS",
    "SEDATE",
    "WAKE",
    "ActionTerms",
    "Agent",
    "AgentAction",
    "AgentObs",
    "AttentionPool",
    "Critic",
    "Magistrate",
    "MagistrateState",
    "Phage",
    "PolicyDistributions",
    "PolicyParams",
    "Specialist",
    "SurgeonGeneral",
    "check_obs",
    "distributions",
    "entropy",
    "entropy_terms",
    "log_prob",
    "log_prob_terms",
    "mode",
    "sample",
]


class Agent(nn.Module):
    """The Magistrate actor-critic: ``agent.apply(variables, obs) -> (PolicyParams, value)``.

    ``agent.apply(variables, obs, method=Agent.actor)`` runs only the actor (the deployed
    policy; the ``critic`` parameters may be absent), ``method=Agent.value`` only the critic.

    Attributes:
      embed_dim: region / layer embedding width ``D``.
      hidden_dim: hidden and global-state width ``H``.
      phage_layers: hidden layers of the Phage.
      num_heads: attention-pooling heads (must divide ``embed_dim``).
      message_rounds: message-passing rounds along the layer chain.
      symlog_inputs: compress the input features with ``sign(x) log(1 + |x|)``.
      init_budget, init_budget_std, init_temperature, init_temperature_std, init_regrow,
        init_regrow_std: the neutral initial policy of the :class:`SurgeonGeneral`.
      keep_bias: the :class:`Specialist`'s initial preference for ``KEEP``.
      head_init_scale: output-layer weight scale of the actor heads (0 = exactly neutral).
    """

    embed_dim: int = 32
    hidden_dim: int = 64
    phage_layers: int = 2
    num_heads: int = 4
    message_rounds: int = 2
    symlog_inputs: bool = True
    init_budget: float = 0.5
    init_budget_std: float = 0.5
    init_temperature: float = 1.0
    init_temperature_std: float = 0.3
    init_regrow: float = 0.5
    init_regrow_std: float = 0.5
    keep_bias: float = 3.0
    head_init_scale: float = 0.01

    def setup(self) -> None:
        self.magistrate = Magistrate(
            self.embed_dim,
            self.hidden_dim,
            self.phage_layers,
            self.num_heads,
            self.message_rounds,
            self.symlog_inputs,
        )
        self.surgeon_general = SurgeonGeneral(
            self.hidden_dim,
            self.init_budget,
            self.init_budget_std,
            self.init_temperature,
            self.init_temperature_std,
            self.init_regrow,
            self.init_regrow_std,
            self.head_init_scale,
        )
        self.specialist = Specialist(self.hidden_dim, self.keep_bias, self.head_init_scale)
        self.critic = Critic(self.hidden_dim)

    def encode(self, obs: AgentObs) -> MagistrateState:
        """The Magistrate's region, layer and global embeddings."""
        return self.magistrate(obs)

    def _policy(self, obs: AgentObs, state: MagistrateState) -> PolicyParams:
        valid = obs.region_valid.astype(bool)
        budget = self.surgeon_general(
            state.layer_emb, state.global_state, obs.layer_valid.astype(bool)
        )
        layer_id = jnp.where(valid, obs.region_layer, 0).astype(jnp.int32)
        region_layer_emb = jnp.take(state.layer_emb, layer_id, axis=0, mode="clip")
        logits = self.specialist(state.region_emb, region_layer_emb, state.global_state)
        keep_only = jnp.asarray([0.0] + [MASKED_LOGIT] * (NUM_DECISIONS - 1), jnp.float32)
        logits = jnp.where(valid[:, None], logits, keep_only)
        return PolicyParams(*budget, region_logits=logits)

    def actor(self, obs: AgentObs) -> PolicyParams:
        """The policy only (decentralised execution: no critic)."""
        return self._policy(obs, self.magistrate(obs))

    def value(self, obs: AgentObs) -> jax.Array:
        """The critic's value only (scalar)."""
        return self.critic(self.magistrate(obs).global_state)

    def __call__(self, obs: AgentObs) -> tuple[PolicyParams, jax.Array]:
        state = self.magistrate(obs)
        return self._policy(obs, state), self.critic(state.global_state)
