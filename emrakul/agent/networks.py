"""The Magistrate's networks: Phage encoder, pooling, message passing, actor heads, critic.

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

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from emrakul.agent.distributions import Categorical, LogitNormal, LogNormal

KEEP, SEDATE, WAKE, LYSE = 0, 1, 2, 3
DECISIONS: tuple[str, ...] = ("keep", "sedate", "wake", "lyse")
"""The Specialist's per-region decisions, in action-index order."""
NUM_DECISIONS = len(DECISIONS)
LOG_SCALE_MIN, LOG_SCALE_MAX = -5.0, 1.0
"""Bounds on the log standard deviation (latent space) of the continuous actions."""
_MASKED_LOGIT = -1e9


class AgentObs(NamedTuple):
    """One host's observation (batched versions add leading axes).

    Attributes:
      regions: ``float32 [R_max, F]``, region features; rows past the host's regions are padding.
      region_valid: ``bool [R_max]``, which rows are real regions.
      region_layer: ``int32 [R_max]``, the layer index (``< L_max``) of each region; 0 for padding.
      layer_valid: ``bool [L_max]``, which layers are real (the layer graph is the chain of
        valid layers in index order; normally a prefix).
      globals: ``float32 [G]``, global features (progress, sparsity, loss slope, ...).
    """

    regions: jax.Array
    region_valid: jax.Array
    region_layer: jax.Array
    layer_valid: jax.Array
    globals: jax.Array


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


class PolicyDistributions(NamedTuple):
    """The per-component distributions built from :class:`PolicyParams`."""

    budget: LogitNormal
    temperature: LogNormal
    regrow: LogitNormal
    region: Categorical


class ActionTerms(NamedTuple):
    """Per-component scalars (log-probabilities or entropies), summed over valid entries."""

    budget: jax.Array
    temperature: jax.Array
    regrow: jax.Array
    region: jax.Array


class MagistrateState(NamedTuple):
    """The Magistrate's encoding of one observation.

    Attributes:
      region_emb: ``[R_max, D]`` Phage embeddings (zero for padded regions).
      layer_emb: ``[L_max, D]`` layer embeddings after message passing (zero for padded layers).
      global_state: ``[H]`` the global state vector.
    """

    region_emb: jax.Array
    layer_emb: jax.Array
    global_state: jax.Array


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


def _symlog(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def _masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
    count = jnp.sum(valid.astype(jnp.float32))
    return jnp.sum(jnp.where(valid[:, None], x, 0.0), axis=0) / jnp.maximum(count, 1.0)


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


def _tanh_mlp(x: jax.Array, hidden_dim: int, num_layers: int, out_dim: int) -> jax.Array:
    """``num_layers`` tanh hidden layers and a linear output (call inside ``nn.compact``)."""
    for _ in range(num_layers):
        x = nn.tanh(nn.Dense(hidden_dim)(x))
    return nn.Dense(out_dim)(x)


class Phage(nn.Module):
    """The shared region encoder: an MLP applied to every row of ``[..., F]`` -> ``[..., D]``.

    Attributes:
      embed_dim: ``D``.
      hidden_dim: width of the hidden layers.
      num_layers: number of hidden layers.
    """

    embed_dim: int = 32
    hidden_dim: int = 64
    num_layers: int = 2

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return _tanh_mlp(features, self.hidden_dim, self.num_layers, self.embed_dim)


class AttentionPool(nn.Module):
    """Multi-head attention pooling with a learned query over the valid rows (Vaswani et al.).

    Attributes:
      num_heads: number of heads; must divide the embedding width.
    """

    num_heads: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        rows, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the width {dim}")
        head = dim // self.num_heads
        keys = nn.Dense(dim, name="key")(x).reshape(rows, self.num_heads, head)
        values = nn.Dense(dim, name="value")(x).reshape(rows, self.num_heads, head)
        query = self.param("query", nn.initializers.normal(1.0), (self.num_heads, head))
        scores = jnp.einsum("rhd,hd->rh", keys, query) / math.sqrt(head)
        scores = jnp.where(valid[:, None], scores, _MASKED_LOGIT)
        weights = jnp.where(valid[:, None], jax.nn.softmax(scores, axis=0), 0.0)
        pooled = jnp.einsum("rh,rhd->hd", weights, values).reshape(dim)
        return nn.Dense(dim, name="out")(pooled)


class Magistrate(nn.Module):
    """Encodes an :class:`AgentObs` into region, layer and global embeddings.

    Attributes:
      embed_dim: ``D``, the region and layer embedding width.
      hidden_dim: ``H``, the hidden width and the global state width.
      phage_layers: hidden layers of the Phage.
      num_heads: attention-pooling heads.
      message_rounds: rounds of message passing along the layer chain.
      symlog_inputs: apply ``sign(x) log(1 + |x|)`` to region and global features first.
    """

    embed_dim: int = 32
    hidden_dim: int = 64
    phage_layers: int = 2
    num_heads: int = 4
    message_rounds: int = 2
    symlog_inputs: bool = True

    @nn.compact
    def __call__(self, obs: AgentObs) -> MagistrateState:
        check_obs(obs)
        valid = obs.region_valid.astype(bool)
        layer_valid = obs.layer_valid.astype(bool)
        num_layers = layer_valid.shape[0]
        features = jnp.where(valid[:, None], jnp.asarray(obs.regions, jnp.float32), 0.0)
        glob = jnp.asarray(obs.globals, jnp.float32)
        if self.symlog_inputs:
            features, glob = _symlog(features), _symlog(glob)

        emb = Phage(self.embed_dim, self.hidden_dim, self.phage_layers, name="phage")(features)
        emb = jnp.where(valid[:, None], emb, 0.0)
        mean_pool = _masked_mean(emb, valid)
        attn_pool = AttentionPool(self.num_heads, name="attention_pool")(emb, valid)

        # Layer nodes: masked segment mean of the region embeddings, plus position features.
        layer_id = jnp.where(valid, obs.region_layer, 0).astype(jnp.int32)
        seg = jax.ops.segment_sum(emb, layer_id, num_segments=num_layers)
        count = jax.ops.segment_sum(valid.astype(jnp.float32), layer_id, num_segments=num_layers)
        layer_mean = seg / jnp.maximum(count, 1.0)[:, None]
        lv = layer_valid.astype(jnp.float32)
        position = jnp.cumsum(lv) - 1.0
        last = jnp.maximum(jnp.sum(lv) - 1.0, 0.0)
        node = jnp.concatenate(
            [
                layer_mean,
                (count / jnp.maximum(jnp.sum(count), 1.0))[:, None],
                (position / jnp.maximum(last, 1.0))[:, None],
                (position == 0.0)[:, None].astype(jnp.float32),
                (position == last)[:, None].astype(jnp.float32),
            ],
            axis=1,
        )
        h = jnp.where(layer_valid[:, None], nn.tanh(nn.Dense(self.embed_dim)(node)), 0.0)

        # Message passing on the chain (Gilmer et al., 2017), residual + LayerNorm updates.
        pad = jnp.zeros((1, self.embed_dim), h.dtype)
        no = jnp.zeros((1,), bool)
        prev_valid = jnp.concatenate([no, layer_valid[:-1]])[:, None]
        next_valid = jnp.concatenate([layer_valid[1:], no])[:, None]
        for r in range(self.message_rounds):
            prev = jnp.concatenate([pad, h[:-1]], axis=0)
            nxt = jnp.concatenate([h[1:], pad], axis=0)
            m_prev = jnp.where(prev_valid, nn.Dense(self.embed_dim, name=f"msg_prev_{r}")(prev), 0)
            m_next = jnp.where(next_valid, nn.Dense(self.embed_dim, name=f"msg_next_{r}")(nxt), 0)
            update = nn.Dense(self.embed_dim, name=f"update_{r}")(
                jnp.concatenate([h, m_prev, m_next], axis=1)
            )
            h = nn.LayerNorm(name=f"norm_{r}")(h + nn.tanh(update))
            h = jnp.where(layer_valid[:, None], h, 0.0)

        layer_pool = _masked_mean(h, layer_valid)
        g = jnp.concatenate([mean_pool, attn_pool, layer_pool, glob])
        g = nn.tanh(nn.Dense(self.hidden_dim, name="global_0")(g))
        g = nn.tanh(nn.Dense(self.hidden_dim, name="global_1")(g))
        return MagistrateState(region_emb=emb, layer_emb=h, global_state=g)


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
        return _tanh_mlp(global_state, self.hidden_dim, self.num_layers, 1)[0]


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
        keep_only = jnp.asarray([0.0] + [_MASKED_LOGIT] * (NUM_DECISIONS - 1), jnp.float32)
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
