"""The Magistrate's encoder: Phage region embeddings, pooling and message passing.

* :class:`Phage` - one MLP applied to every region's feature row (weights shared across
  regions) -> region embeddings ``[R_max, D]``.
* :class:`AttentionPool` - multi-head attention pooling with a learned query (Vaswani et al.,
  2017, "Attention is all you need"; softmax over the valid regions only).
* :class:`Magistrate` - masked mean and attention pooling of the region embeddings; per-layer
  embeddings ``[L_max, D]`` (masked segment mean of region embeddings by layer, plus the
  layer's relative depth and share of regions) refined by a few rounds of message passing along
  the layer chain (Gilmer et al., 2017, "Neural message passing for quantum chemistry"; layer
  ``i`` receives direction-specific messages from ``i - 1`` and ``i + 1``); these and the
  global features are mixed into a global state ``[H]``.

Padded regions and layers never influence anything: their features are replaced by zeros before
the Phage (so even NaN padding is harmless) and they are excluded from every pooling.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from emrakul.agent.spaces import MASKED_LOGIT, AgentObs, check_obs


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


def _symlog(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def _masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
    count = jnp.sum(valid.astype(jnp.float32))
    return jnp.sum(jnp.where(valid[:, None], x, 0.0), axis=0) / jnp.maximum(count, 1.0)


def tanh_mlp(x: jax.Array, hidden_dim: int, num_layers: int, out_dim: int) -> jax.Array:
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
        return tanh_mlp(features, self.hidden_dim, self.num_layers, self.embed_dim)


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
        scores = jnp.where(valid[:, None], scores, MASKED_LOGIT)
        weights = jnp.where(valid[:, None], jax.nn.softmax(scores, axis=0), 0.0)
        pooled = jnp.einsum("rh,rhd->hd", weights, values).reshape(dim)
        return nn.Dense(dim, name="out")(pooled)


def _layer_nodes(
    emb: jax.Array, valid: jax.Array, region_layer: jax.Array, layer_valid: jax.Array
) -> jax.Array:
    """Layer node features ``[L_max, D + 4]``: the masked segment mean of the region embeddings
    by layer, the layer's share of the regions, its relative depth and first / last flags."""
    num_layers = layer_valid.shape[0]
    layer_id = jnp.where(valid, region_layer, 0).astype(jnp.int32)
    seg = jax.ops.segment_sum(emb, layer_id, num_segments=num_layers)
    count = jax.ops.segment_sum(valid.astype(jnp.float32), layer_id, num_segments=num_layers)
    layer_mean = seg / jnp.maximum(count, 1.0)[:, None]
    lv = layer_valid.astype(jnp.float32)
    position = jnp.cumsum(lv) - 1.0
    last = jnp.maximum(jnp.sum(lv) - 1.0, 0.0)
    return jnp.concatenate(
        [
            layer_mean,
            (count / jnp.maximum(jnp.sum(count), 1.0))[:, None],
            (position / jnp.maximum(last, 1.0))[:, None],
            (position == 0.0)[:, None].astype(jnp.float32),
            (position == last)[:, None].astype(jnp.float32),
        ],
        axis=1,
    )


def _message_passing(h: jax.Array, layer_valid: jax.Array, rounds: int) -> jax.Array:
    """Rounds of message passing on the layer chain (Gilmer et al., 2017): each valid layer
    gets direction-specific messages from its neighbours, with residual + LayerNorm updates.

    Call it inside a ``nn.compact`` method: it creates the parent's ``msg_prev_{r}``,
    ``msg_next_{r}``, ``update_{r}`` and ``norm_{r}`` submodules.
    """
    dim = h.shape[1]
    pad = jnp.zeros((1, dim), h.dtype)
    no = jnp.zeros((1,), bool)
    prev_valid = jnp.concatenate([no, layer_valid[:-1]])[:, None]
    next_valid = jnp.concatenate([layer_valid[1:], no])[:, None]
    for r in range(rounds):
        prev = jnp.concatenate([pad, h[:-1]], axis=0)
        nxt = jnp.concatenate([h[1:], pad], axis=0)
        m_prev = jnp.where(prev_valid, nn.Dense(dim, name=f"msg_prev_{r}")(prev), 0)
        m_next = jnp.where(next_valid, nn.Dense(dim, name=f"msg_next_{r}")(nxt), 0)
        update = nn.Dense(dim, name=f"update_{r}")(jnp.concatenate([h, m_prev, m_next], axis=1))
        h = nn.LayerNorm(name=f"norm_{r}")(h + nn.tanh(update))
        h = jnp.where(layer_valid[:, None], h, 0.0)
    return h


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
        features = jnp.where(valid[:, None], jnp.asarray(obs.regions, jnp.float32), 0.0)
        glob = jnp.asarray(obs.globals, jnp.float32)
        if self.symlog_inputs:
            features, glob = _symlog(features), _symlog(glob)

        emb = Phage(self.embed_dim, self.hidden_dim, self.phage_layers, name="phage")(features)
        emb = jnp.where(valid[:, None], emb, 0.0)
        mean_pool = _masked_mean(emb, valid)
        attn_pool = AttentionPool(self.num_heads, name="attention_pool")(emb, valid)

        node = _layer_nodes(emb, valid, obs.region_layer, layer_valid)
        h = jnp.where(layer_valid[:, None], nn.tanh(nn.Dense(self.embed_dim)(node)), 0.0)
        h = _message_passing(h, layer_valid, self.message_rounds)
        layer_pool = _masked_mean(h, layer_valid)
        g = jnp.concatenate([mean_pool, attn_pool, layer_pool, glob])
        g = nn.tanh(nn.Dense(self.hidden_dim, name="global_0")(g))
        g = nn.tanh(nn.Dense(self.hidden_dim, name="global_1")(g))
        return MagistrateState(region_emb=emb, layer_emb=h, global_state=g)
