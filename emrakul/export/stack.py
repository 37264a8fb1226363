"""The sequential ``Dense`` / ``Conv`` stacks that compaction understands.

A stack is ``Conv*_0 ... Conv*_k`` (optional; kernels ``[*window, in, out]``) then
``Dense_0 ... Dense_L`` (kernels ``[in, out]``), each with an optional ``bias``, as in
``hosts.MLP`` and ``hosts.CNN1D``. This module reads the layer order from the params, rejects
anything else with the reason named, and views a consumer's kernel by producer unit, so that
compaction can remove a unit's output column together with the input rows that read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import is_floating

_LAYER = re.compile(r"^(Dense|Conv1D|Conv)_(\d+)$")
_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "identity": lambda x: x,
}


def _check_layer(name: str, layer: Any) -> None:
    """A layer holds a floating ``kernel`` and optionally a floating ``bias``, nothing else."""
    if not isinstance(layer, Mapping) or "kernel" not in layer:
        raise ValueError(f"cannot compact: layer '{name}' has no 'kernel'")
    for leaf in layer:
        if leaf not in ("kernel", "bias"):
            raise ValueError(
                f"cannot compact: unknown leaf '{name}/{leaf}' (only kernel and bias are "
                "understood; normalisation layers and the like are not supported)"
            )
        if not isinstance(layer[leaf], np.ndarray | jax.Array) or not is_floating(layer[leaf]):
            raise ValueError(
                f"cannot compact: leaf '{name}/{leaf}' is {type(layer[leaf]).__name__}, "
                "not a floating array"
            )


def _check_shapes(name: str, layer: Mapping) -> None:
    """The kernel has its kind's rank and the bias matches the kernel's outputs."""
    kernel = layer["kernel"]
    dense = name.startswith("Dense")
    if (np.ndim(kernel) != 2) if dense else (np.ndim(kernel) < 3):
        raise ValueError(
            f"cannot compact: '{name}/kernel' has shape {np.shape(kernel)}; expected "
            + ("[in, out]" if dense else "[*window, in, out]")
        )
    if "bias" in layer and np.shape(layer["bias"]) != np.shape(kernel)[-1:]:
        raise ValueError(
            f"cannot compact: '{name}/bias' has shape {np.shape(layer['bias'])}, "
            f"kernel has {np.shape(kernel)[-1]} outputs"
        )


def layer_names(params: Mapping) -> list[str]:
    """Layer names of a sequential stack in forward order (convs, then denses).

    Args:
      params: a dict of layers named ``Dense_i`` / ``Conv1D_i`` / ``Conv_i``.

    Returns:
      The layer names, convs first, each kind in index order.

    Raises:
      ValueError: not a non-empty dict of such layers, unknown leaves, mixed conv kinds,
        non-consecutive indices, or kernel / bias shapes that do not fit.
    """
    if not isinstance(params, Mapping) or not params:
        raise ValueError(
            f"compact needs a non-empty dict of layers (Dense_i / Conv1D_i / Conv_i), got "
            f"{type(params).__name__}"
        )
    groups: dict[str, list[int]] = {}
    for name in params:
        match = _LAYER.match(str(name))
        if match is None:
            raise ValueError(
                f"cannot compact: '{name}' is not a Dense_i / Conv1D_i / Conv_i layer; only plain "
                "sequential stacks (convs, then denses) are supported"
            )
        groups.setdefault(match.group(1), []).append(int(match.group(2)))
        _check_layer(name, params[name])
    convs = [k for k in groups if k != "Dense"]
    if len(convs) > 1:
        raise ValueError(f"cannot compact: mixed conv layer kinds {sorted(convs)}; order unknown")
    names = []
    for kind in convs + (["Dense"] if "Dense" in groups else []):
        idx = sorted(groups[kind])
        if idx != list(range(len(idx))):
            raise ValueError(
                f"cannot compact: non-sequential layer names {[f'{kind}_{i}' for i in idx]}; "
                f"expected {kind}_0 ... {kind}_{len(idx) - 1}"
            )
        names += [f"{kind}_{i}" for i in idx]
    for name in names:
        _check_shapes(name, params[next(k for k in params if str(k) == name)])
    return names


def activation_fn(activation: str | Callable) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy function for a named activation, or a numpy wrapper around a jnp function."""
    if callable(activation):
        return lambda x: np.asarray(activation(jnp.asarray(x)))
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use {sorted(_ACTIVATIONS)} or a fn")
    return _ACTIVATIONS[activation]


def consumer_view(prev: str, nxt: str, w_next: np.ndarray, width: int) -> np.ndarray:
    """The consumer's kernel as ``[positions, width, out]``: its rows grouped by producer unit.

    Args:
      prev: the producer layer's name.
      nxt: the consumer layer's name.
      w_next: the consumer's kernel (or its mask), ``[*window, in, out]`` or ``[in, out]``.
      width: the producer's number of output units.

    Returns:
      A reshaped view of ``w_next``; a Dense after a conv reads the flatten of a channels-last
      map (rows position-major, channel-minor).

    Raises:
      ValueError: a conv after a Dense, or input rows that do not match ``width``.
    """
    in_dim = w_next.shape[-2]
    if prev.startswith("Dense") and not nxt.startswith("Dense"):
        raise ValueError(f"cannot compact: a conv layer '{nxt}' after a dense layer '{prev}'")
    if nxt.startswith("Dense") and not prev.startswith("Dense"):
        if in_dim % width:
            raise ValueError(
                f"cannot compact: '{nxt}' has {in_dim} inputs, not a multiple of the {width} "
                f"channels of '{prev}' (flatten of [positions, channels] expected)"
            )
        return w_next.reshape(in_dim // width, width, w_next.shape[-1])
    if in_dim != width:
        raise ValueError(
            f"cannot compact: shape mismatch, '{prev}' has {width} outputs but '{nxt}/kernel' "
            f"has shape {w_next.shape} ({in_dim} inputs)"
        )
    return w_next.reshape(-1, width, w_next.shape[-1])
