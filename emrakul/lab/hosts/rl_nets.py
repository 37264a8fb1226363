"""Networks of the RL hosts: the MinAtar CNN, its global-average-pooling variant, and MLPs.

* :class:`MinAtarQNetwork`: the network of MinAtar's DQN baseline (Young & Tian 2019,
  "MinAtar: An Atari-Inspired Testbed for Thorough and Reproducible Reinforcement Learning
  Experiments"): one 3x3 'VALID' convolution with ``16 * width`` channels and a ReLU, flatten,
  a ReLU ``Dense(128 * width)``, then one Q-value per action. ``pooling="gap"`` replaces the
  flatten by global average pooling over the spatial positions, the dense control used by
  Sokar & Castro 2025 ("Mind the GAP! The Challenges of Scale in Pixel-based Deep Reinforcement
  Learning") when asking whether pruning helps only because the flatten layer is oversized.
* :class:`ImpalaQNetwork`: the Impala ResNet (Espeholt et al. 2018, "IMPALA: Scalable
  Distributed Deep-RL with Importance Weighted Actor-Learner Architectures"): three stacks of a
  3x3 convolution, a 3x3 stride-2 max-pool and two residual blocks, channels ``(16, 32, 32) *
  width``, then a ReLU ``Dense(256 * width)``; the network at which Obando-Ceron et al. 2024 and
  Graesser et al. 2022 report that pruning helps, with the same ``pooling="gap"`` control.
* :class:`MLPQNetwork`: a ReLU MLP for low-dimensional observations (CartPole).
* :class:`MinAtarActorCritic` and :class:`MLPActorCritic`: the PPO host's policy-logit and value
  heads on MinAtar's torso, or separate tanh MLPs for the actor and the critic (PureJaxRL's
  CartPole network); the policy head is scaled by 0.01 so that the initial policy is near
  uniform.

Every weight matrix is a parameter named ``kernel`` (at least 2-D) next to a ``bias``, so the
default pruning filter of :func:`emrakul.wrap` (floating leaves with ``ndim >= 2``) finds them.
Initialisers are Flax's defaults (LeCun-normal kernels, zero biases), never orthogonal: batched
QR inside ``jit(vmap)`` can deadlock XLA:CPU.

``Conv2D`` computes a stride-1 2-D convolution as one matmul over concatenated shifted slices
(im2col, Chellapilla et al. 2006, "High performance convolutional neural networks for document
processing"), with ``nn.Conv``'s parameters (``kernel`` [kh, kw, in, out], ``bias`` [out]).
It is faster than ``flax.linen.Conv`` on XLA:CPU, above all when ``vmap``-ped over seeds, where
``nn.Conv`` becomes a grouped convolution (``python -m benchmarks.dqn_speed`` measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PADDINGS = ("VALID", "SAME")
POOLINGS = ("flatten", "gap")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    return int(value)


class Conv2D(nn.Module):
    """Stride-1 2-D convolution as a single matmul over shifted slices (im2col).

    Numerically equal (up to float rounding) to
    ``nn.Conv(features, kernel_size, padding=padding)`` given the same ``kernel``
    ([kh, kw, in, out]) and ``bias`` ([out]) params. 'SAME' puts ``(k - 1) // 2`` zeros before
    each spatial axis and the rest after, as XLA does.

    Attributes:
      features: number of output channels.
      kernel_size: an int (square filter) or ``(kh, kw)``.
      padding: ``"VALID"`` (no padding, MinAtar's original network) or ``"SAME"``.
      use_bias: whether to add a bias.
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    padding: str = "VALID"
    use_bias: bool = True
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the convolution to ``x`` of shape ``[..., height, width, in_channels]``."""
        if x.ndim < 3:
            raise ValueError(f"Conv2D expects [..., height, width, channels], got {x.shape}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got padding={self.padding!r}")
        ks = self.kernel_size
        kh, kw = (ks, ks) if isinstance(ks, int | np.integer) else tuple(ks)
        kh, kw = _positive_int("kernel_size", kh), _positive_int("kernel_size", kw)
        features = _positive_int("features", self.features)
        h, w, cin = x.shape[-3:]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin, features))
        if self.padding == "SAME":
            pad = [(0, 0)] * (x.ndim - 3)
            pad += [
                ((kh - 1) // 2, kh - 1 - (kh - 1) // 2),
                ((kw - 1) // 2, kw - 1 - (kw - 1) // 2),
            ]
            x = jnp.pad(x, [*pad, (0, 0)])
            ho, wo = h, w
        else:
            ho, wo = h - kh + 1, w - kw + 1
            if ho < 1 or wo < 1:
                raise ValueError(f"a {kh}x{kw} 'VALID' convolution needs an input of at least "
                                 f"that size, got {h}x{w}")  # fmt: skip
        # cols[..., y, x, (i * kw + j) * cin + c] = xp[..., y + i, x + j, c], matching
        # kernel.reshape(kh * kw * cin, out).
        cols = jnp.concatenate(
            [x[..., i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)], axis=-1
        )
        y = cols @ kernel.reshape(kh * kw * cin, features)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (features,))
        return y


class MinAtarQNetwork(nn.Module):
    """MinAtar's DQN network (Young & Tian 2019), optionally widened or globally pooled.

    ``Conv2D_0`` (``16 * width`` channels, 3x3, 'VALID') -> ReLU -> flatten (a 10x10 input gives
    8x8x16w features) or global average pooling -> ``Dense_0`` (``128 * width``) -> ReLU ->
    ``Dense_1`` (``num_actions``).

    Attributes:
      num_actions: number of Q-values.
      width: multiplier of the channels and hidden units (the network-scaling axis of
        Obando-Ceron et al. 2024, "In value-based deep reinforcement learning, a pruned network
        is a good network").
      pooling: ``"flatten"`` (the original network) or ``"gap"`` (global average pooling).
    """

    num_actions: int
    width: int = 1
    pooling: str = "flatten"
    torso: ClassVar[Callable] = staticmethod(lambda *a: minatar_torso(*a))

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        """Maps ``[..., H, W, C]`` observations to ``[..., num_actions]`` Q-values."""
        num_actions = _positive_int("num_actions", self.num_actions)
        x = self.torso(obs, self.width, self.pooling, type(self).__name__)
        return nn.Dense(num_actions)(x)


def minatar_torso(obs: jax.Array, width: int, pooling: str, name: str = "network") -> jax.Array:
    """MinAtar's torso: ``Conv2D_0`` (16w channels, 3x3, 'VALID') -> ReLU -> flatten or global
    average pooling -> ``Dense_0`` (128w) -> ReLU.

    Call it inside a compact ``__call__``: the layers become submodules of the calling module
    (so every MinAtar network names them ``Conv2D_0`` and ``Dense_0``).

    Raises:
      ValueError: a bad ``width`` / ``pooling`` or an observation that is not ``[..., H, W, C]``
        (``name`` says which network).
    """
    width = _positive_int("width", width)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got pooling={pooling!r}")
    if obs.ndim < 3:
        raise ValueError(f"{name} expects [..., H, W, C], got shape {obs.shape}")
    x = nn.relu(Conv2D(16 * width, 3, padding="VALID")(obs.astype(jnp.float32)))
    x = jnp.mean(x, axis=(-3, -2)) if pooling == "gap" else x.reshape(*x.shape[:-3], -1)
    return nn.relu(nn.Dense(128 * width)(x))


IMPALA_CHANNELS = (16, 32, 32)


def impala_torso(obs: jax.Array, width: int, pooling: str, name: str = "network") -> jax.Array:
    """The Impala ResNet torso (Espeholt et al. 2018) with the fast ``Conv2D`` ('SAME').

    Per stack ``s`` with ``c = IMPALA_CHANNELS[s] * width`` channels: a convolution, a 3x3
    max-pool with stride 2 ('SAME': 10x10 -> 5x5 -> 3x3 -> 2x2), then two residual blocks
    ``x + conv(relu(conv(relu(x))))``; then ReLU, flatten (or global average pooling) and a ReLU
    ``Dense(256 * width)``. Call it inside a compact ``__call__``.

    Raises:
      ValueError: a bad ``width`` / ``pooling`` or an observation not ``[..., H, W, C]``.
    """
    width = _positive_int("width", width)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got pooling={pooling!r}")
    if obs.ndim < 3:
        raise ValueError(f"{name} expects [..., H, W, C], got shape {obs.shape}")
    x = obs.astype(jnp.float32)
    lead = x.shape[:-3]
    for channels in IMPALA_CHANNELS:
        c = channels * width
        x = Conv2D(c, 3, padding="SAME")(x)
        pooled = nn.max_pool(x.reshape(-1, *x.shape[-3:]), (3, 3), (2, 2), padding="SAME")
        x = pooled.reshape(*lead, *pooled.shape[-3:])
        for _ in range(2):
            h = Conv2D(c, 3, padding="SAME")(nn.relu(x))
            x = x + Conv2D(c, 3, padding="SAME")(nn.relu(h))
    x = nn.relu(x)
    x = jnp.mean(x, axis=(-3, -2)) if pooling == "gap" else x.reshape(*lead, -1)
    return nn.relu(nn.Dense(256 * width)(x))


class ImpalaQNetwork(MinAtarQNetwork):
    """The Impala ResNet Q-network (see :func:`impala_torso`), one Q-value per action.

    Attributes:
      num_actions: number of Q-values.
      width: multiplier of every stack's channels and of the dense layer.
      pooling: ``"flatten"`` or ``"gap"`` (global average pooling before the dense layer).
    """

    torso: ClassVar[Callable] = staticmethod(lambda *a: impala_torso(*a))


class MLPQNetwork(nn.Module):
    """ReLU MLP Q-network for vector observations (``Dense_0`` ... ``Dense_L``).

    Attributes:
      num_actions: number of Q-values.
      hidden: widths of the hidden layers.
    """

    num_actions: int
    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        """Maps ``[..., D]`` observations to ``[..., num_actions]`` Q-values."""
        num_actions = _positive_int("num_actions", self.num_actions)
        x = obs.astype(jnp.float32)
        for h in self.hidden:
            x = nn.relu(nn.Dense(_positive_int("hidden", h))(x))
        return nn.Dense(num_actions)(x)


_SMALL = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")


class MinAtarActorCritic(nn.Module):
    """MinAtar torso (Young & Tian 2019) with policy-logit and value heads."""

    num_actions: int
    width: int = 1
    pooling: str = "flatten"

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = minatar_torso(obs, self.width, self.pooling, type(self).__name__)
        logits = nn.Dense(self.num_actions, kernel_init=_SMALL, name="policy")(x)
        value = nn.Dense(1, name="value")(x)
        return logits, value[..., 0]


class MLPActorCritic(nn.Module):
    """Separate tanh MLPs for the actor and the critic (vector observations)."""

    num_actions: int
    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs.astype(jnp.float32)
        a, v = x, x
        for i, h in enumerate(self.hidden):
            a = nn.tanh(nn.Dense(h, name=f"actor_{i}")(a))
            v = nn.tanh(nn.Dense(h, name=f"critic_{i}")(v))
        logits = nn.Dense(self.num_actions, kernel_init=_SMALL, name="policy")(a)
        value = nn.Dense(1, name="value")(v)
        return logits, value[..., 0]
