"""The Magistrate's encoder parts, shared by :mod:`emrakul.agent.plan_network`.

* :class:`Phage` - one MLP applied to every region's feature row (weights shared across
  regions) -> region embeddings ``[R_max, D]``.
* :func:`tanh_mlp` - the tanh MLP the Phage is made of.
* ``_layer_nodes`` - per-layer node features ``[L_max, D + 4]``: the masked segment mean of the
  region embeddings by layer, plus the layer's share of the regions, relative depth and
  first / last flags.
* ``_message_passing`` - rounds of message passing along the layer chain (Gilmer et al., 2017,
  "Neural message passing for quantum chemistry"; layer ``i`` receives direction-specific
  messages from ``i - 1`` and ``i + 1``).
* ``_symlog`` and ``_masked_mean`` - input squashing and pooling over the valid rows.

Padded regions and layers never influence anything: callers replace their features by zeros
before the Phage (so even NaN padding is harmless) and exclude them from every pooling.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


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
