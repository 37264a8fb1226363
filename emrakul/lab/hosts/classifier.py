"""Classifier hosts for MNIST-1D: an MLP and a small 1-D CNN, with loss and metric helpers.

Hosts are Flax Linen modules with plain-dict params. Every weight matrix is a parameter named
``kernel`` (at least 2-D) next to a ``bias``, so masks, vital signs and regions (output units of
a ``Dense`` kernel's last axis, output channels of a ``Conv1D`` kernel's last axis) find them by
name. Initialisers are Flax's defaults (LeCun-normal kernels, zero biases); nothing uses QR
(orthogonal init runs batched LAPACK that can deadlock XLA:CPU inside ``jit(vmap)``).

``Conv1D`` computes a 'SAME'-padded, stride-1 convolution as one matmul over concatenated shifted
slices (an im2col, Chellapilla et al. 2006, "High performance convolutional neural networks for
document processing"): on XLA:CPU one large matmul beats ``flax.linen.Conv``, above all when
``vmap``-ped over hosts, where ``nn.Conv`` becomes a grouped convolution
(``python -m benchmarks.loop_throughput`` measures the loop). Its kernel has ``nn.Conv``'s
layout ``[kernel_size, in, out]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emrakul.lab.hosts.mnist1d import NUM_CLASSES, SIGNAL_LENGTH, Split

HOST_KINDS = ("mlp", "cnn")


def _check_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    """Checks that ``sizes`` is a non-empty sequence of positive ints and returns Python ints."""
    sizes = tuple(sizes)
    if not sizes:
        raise ValueError(f"{name} must not be empty")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1:
            raise ValueError(f"{name} must hold positive ints, got {sizes!r}")
    return tuple(int(s) for s in sizes)


class Conv1D(nn.Module):
    """'SAME'-padded, stride-1 1-D convolution as a single matmul (im2col).

    Numerically equal to ``nn.Conv(features, (kernel_size,), padding="SAME")`` with the same
    ``kernel`` ([kernel_size, in, out]) and ``bias`` ([out]) params; padding puts
    ``(kernel_size - 1) // 2`` zeros before the signal and the rest after, as XLA does.

    Attributes:
      features: number of output channels.
      kernel_size: width of the filter.
      use_bias: whether to add a bias.
    """

    features: int
    kernel_size: int
    use_bias: bool = True
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the convolution to ``x`` of shape ``[..., length, in_channels]``."""
        if x.ndim < 2:
            raise ValueError(f"Conv1D expects [..., length, channels], got shape {x.shape}")
        k, length, cin = self.kernel_size, x.shape[-2], x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, cin, self.features))
        lo = (k - 1) // 2
        pad = [(0, 0)] * (x.ndim - 2) + [(lo, k - 1 - lo), (0, 0)]
        xp = jnp.pad(x, pad)
        # cols[..., t, i * cin + c] = xp[..., t + i, c], matching kernel.reshape(k * cin, out).
        cols = jnp.concatenate([xp[..., i : i + length, :] for i in range(k)], axis=-1)
        y = cols @ kernel.reshape(k * cin, self.features)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


def max_pool2(x: jax.Array) -> jax.Array:
    """Max-pools ``[..., length, channels]`` by 2 along the length (an odd last step is dropped)."""
    length = x.shape[-2] // 2
    x = x[..., : 2 * length, :]
    return x.reshape(*x.shape[:-2], length, 2, x.shape[-1]).max(axis=-2)


class MLP(nn.Module):
    """Multi-layer perceptron with ReLU hidden layers (``Dense_0`` ... ``Dense_L``).

    Attributes:
      features: widths of the hidden layers.
      num_classes: number of logits.
    """

    features: Sequence[int]
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``[B, D]`` inputs (extra trailing axes are flattened) to ``[B, num_classes]``."""
        x = x.reshape(x.shape[0], -1)
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN1D(nn.Module):
    """1-D CNN: [Conv1D -> ReLU -> max-pool by 2] per channel count, then a ReLU Dense, then logits.

    A ``[B, 40]`` signal is read as ``[B, 40, 1]``; with two conv layers the length goes
    40 -> 20 -> 10 before flattening. Downsampling is a max-pool (window 2, stride 2) rather than
    a strided convolution, so every conv kernel sees every position and channel pruning acts on
    whole feature maps.

    Attributes:
      channels: output channels of each conv layer (``Conv1D_0`` ...).
      kernel_size: filter width of every conv layer.
      hidden: width of the dense layer after the convolutions (``Dense_0``).
      num_classes: number of logits (``Dense_1``).
    """

    channels: Sequence[int]
    kernel_size: int = 5
    hidden: int = 128
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``[B, length]`` (or ``[B, length, C]``) inputs to ``[B, num_classes]`` logits."""
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3:
            raise ValueError(f"CNN1D expects [B, length] or [B, length, C], got shape {x.shape}")
        for c in self.channels:
            x = max_pool2(nn.relu(Conv1D(c, self.kernel_size)(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


def make_host(
    kind: str,
    width: int | Sequence[int],
    depth: int = 2,
    num_classes: int = NUM_CLASSES,
    kernel_size: int = 5,
    hidden: int = 128,
) -> nn.Module:
    """Builds a classifier host by name.

    Args:
      kind: ``"mlp"`` or ``"cnn"``.
      width: hidden widths (MLP) or conv channels (CNN); an int is repeated ``depth`` times.
      depth: number of hidden/conv layers when ``width`` is an int.
      num_classes: number of logits.
      kernel_size: CNN filter width (ignored for the MLP).
      hidden: width of the CNN's dense layer (ignored for the MLP).

    Returns:
      An :class:`MLP` or :class:`CNN1D` module.

    Raises:
      ValueError: on an unknown kind or non-positive sizes.
    """
    if kind not in HOST_KINDS:
        raise ValueError(f"unknown host kind {kind!r}; expected one of {HOST_KINDS}")
    if isinstance(width, int | np.integer) and not isinstance(width, bool):
        (depth,) = _check_sizes("depth", (depth,))
        width = (int(width),) * depth
    elif isinstance(width, str) or not isinstance(width, Sequence | np.ndarray):
        raise ValueError(f"width must be an int or a sequence of ints, got {width!r}")
    sizes = _check_sizes("width", list(width))
    (num_classes,) = _check_sizes("num_classes", (num_classes,))
    if kind == "mlp":
        return MLP(features=sizes, num_classes=num_classes)
    (kernel_size,) = _check_sizes("kernel_size", (kernel_size,))
    (hidden,) = _check_sizes("hidden", (hidden,))
    if SIGNAL_LENGTH >> len(sizes) < 1:
        raise ValueError(f"{len(sizes)} conv layers pool a length-{SIGNAL_LENGTH} signal to zero")
    return CNN1D(channels=sizes, kernel_size=kernel_size, hidden=hidden, num_classes=num_classes)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``[B, C]`` logits against ``[B]`` integer labels."""
    if logits.ndim != 2 or y.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [B, C] and labels [B], got {logits.shape}, {y.shape}")
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of ``[B]`` labels equal to the argmax of ``[B, C]`` logits."""
    if logits.ndim != 2 or y.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [B, C] and labels [B], got {logits.shape}, {y.shape}")
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def evaluate(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    split: Split,
    batch_size: int = 1000,
) -> dict[str, jax.Array]:
    """Loss and accuracy over a whole split, in fixed-size chunks.

    The split is cut into ``ceil(N / batch_size)`` chunks evaluated with ``lax.map`` (the last
    one padded and masked out), so memory is bounded and the function is pure: it can be jitted
    and vmapped over params (a population of hosts). The MNIST-1D splits fit in one chunk.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``, e.g. ``model.apply``.
      params: the host's parameters.
      split: the :class:`Split` to evaluate on.
      batch_size: chunk size (static); clipped to ``N``.

    Returns:
      ``{"loss": mean cross-entropy, "accuracy": fraction correct}`` as float32 scalars.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = split.x.shape[0]
    if n < 1 or split.y.shape != (n,):
        raise ValueError(f"split must hold N >= 1 examples, got {split.x.shape}, {split.y.shape}")
    bs = min(batch_size, n)
    chunks = -(-n // bs)
    pad = chunks * bs - n
    x = jnp.pad(split.x, [(0, pad)] + [(0, 0)] * (split.x.ndim - 1))
    y = jnp.pad(split.y, (0, pad))
    valid = jnp.arange(chunks * bs) < n

    def chunk(args: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        xb, yb, vb = args
        logits = apply_fn(params, xb)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        hit = jnp.argmax(logits, axis=-1) == yb
        return jnp.sum(jnp.where(vb, nll, 0.0)), jnp.sum(jnp.where(vb, hit, 0))

    def rs(a: jax.Array) -> jax.Array:
        return a.reshape(chunks, bs, *a.shape[1:])

    nll, hits = jax.lax.map(chunk, (rs(x), rs(y), rs(valid)))
    return {
        "loss": (jnp.sum(nll) / n).astype(jnp.float32),
        "accuracy": (jnp.sum(hits) / n).astype(jnp.float32),
    }
