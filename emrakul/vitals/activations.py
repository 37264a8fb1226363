"""Per-unit activation statistics and dormant-neuron detection for Flax Linen modules.

A unit (neuron, channel) is *dormant* when its average absolute activation is tiny compared to
the other units of its layer. Following ReDo (Sokar, Agarwal, Castro & Evci, 2023, "The Dormant
Neuron Phenomenon in Deep Reinforcement Learning", ICML), unit ``i`` of a layer scores

    s_i = E|h_i| / ((1/H) sum_j E|h_j|)

with expectations over a batch (and every other non-unit axis, such as the spatial positions of
a convolution), and it is dormant when ``s_i <= tau``. ``tau = 0`` flags units that never
activate on the batch (dead ReLUs); ReDo uses ``tau`` up to about 0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.vitals.statistics import stat_dtype

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Dense, nn.DenseGeneral, nn.Conv)
"""The submodules whose outputs :func:`activation_stats` captures by default."""

_CALL = "__call__"


class ActivationStats(NamedTuple):
    """Statistics of the units of one layer (units are the layer output's last axis).

    Attributes:
      mean_abs: ``[units]`` float, ``E|h_i|`` over every non-unit axis of the batch.
      dormant_score: ``[units]`` float, ReDo's score ``E|h_i| / mean_j E|h_j|`` (0 for every
        unit of a layer whose activations are all zero).
      dormant: ``[units]`` bool, ``dormant_score <= tau``.
    """

    mean_abs: jax.Array
    dormant_score: jax.Array
    dormant: jax.Array


def _stats(values: list[jax.Array], tau: float | jax.Array, name: str) -> ActivationStats:
    """Pools every captured value of one layer into per-unit statistics."""
    units = {jnp.shape(v)[-1] for v in values}
    if len(units) != 1:
        raise ValueError(
            f"'{name}' produced outputs with different numbers of units {sorted(units)}; "
            "activation statistics need one unit count per layer"
        )
    dt = stat_dtype(jnp.result_type(*values))
    total = sum(jnp.sum(jnp.abs(v.astype(dt)).reshape(-1, v.shape[-1]), axis=0) for v in values)
    count = sum(v.size // v.shape[-1] for v in values)
    mean_abs = total / max(count, 1)
    layer_mean = jnp.mean(mean_abs)
    ok = layer_mean > 0
    score = jnp.where(ok, mean_abs / jnp.where(ok, layer_mean, 1), 0)
    return ActivationStats(mean_abs=mean_abs, dormant_score=score, dormant=score <= tau)


def _entries(value: Any) -> list[jax.Array]:
    """The floating arrays stored under one intermediates name (a tuple, as ``sow`` keeps)."""
    items = value if isinstance(value, tuple | list) else [value]
    out = []
    for item in items:
        is_array = hasattr(item, "shape") and hasattr(item, "dtype")
        if is_array and jnp.issubdtype(item.dtype, jnp.floating):
            out.append(jnp.atleast_1d(item))
    return out


def _collect(tree: Mapping, prefix: tuple[str, ...], activation, out: dict[str, list]) -> None:
    """Walks the ``intermediates`` collection; a nested mapping is a submodule's scope."""
    for name, value in tree.items():
        if isinstance(value, Mapping):
            _collect(value, (*prefix, str(name)), activation, out)
            continue
        entries = _entries(value)
        if not entries:
            continue
        if name == _CALL:  # a captured Dense/Conv output: a pre-activation
            key = "/".join(prefix) or "<root>"
            if activation is not None:
                entries = [activation(e) for e in entries]
        else:  # sown by the module itself: taken as it is
            key = "/".join((*prefix, str(name)))
        out.setdefault(key, []).extend(entries)


def activation_stats(
    module: nn.Module,
    variables: PyTree,
    inputs: Any,
    *,
    tau: float | jax.Array = 0.0,
    activation: Callable[[jax.Array], jax.Array] | None = jax.nn.relu,
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    **apply_kwargs: Any,
) -> dict[str, ActivationStats]:
    """Runs ``module`` on a batch and returns ReDo statistics for every unit of every layer.

    What is captured (``module.apply(..., capture_intermediates=filter)``):

    * the output of every ``__call__`` of a submodule that is an instance of ``layer_types``
      (by default ``nn.Dense``, ``nn.DenseGeneral`` and ``nn.Conv``, subclasses included). These
      are *pre-activations*; ``activation`` (ReLU by default, ``None`` for the identity) is
      applied to them before the statistics are taken. The output layer is included too (its
      "units" are the logits); the caller may ignore it.
    * anything the module sowed into the ``'intermediates'`` collection itself
      (``self.sow('intermediates', name, h)``), taken as it is, without ``activation``: sow
      post-activations to cover layers with other nonlinearities, normalisation, or layers of
      other types (pass ``layer_types=()`` to use only sown values).

    Units are the last axis of each output; the statistics reduce over all other axes (batch,
    sequence, spatial). A layer called several times (shared weights, or a name sown repeatedly)
    pools all its calls. Any ``'intermediates'`` already in ``variables`` are ignored.

    Args:
      module: a Flax Linen module.
      variables: its variables (``{'params': ...}`` and any other collections).
      inputs: the batch, passed as the first positional argument of ``module.apply``.
      tau: dormancy threshold on the ReDo score (``dormant = score <= tau``); may be traced.
      activation: applied to captured layer outputs; ``None`` for the identity.
      layer_types: the submodule classes whose outputs are captured.
      **apply_kwargs: forwarded to ``module.apply`` (``method``, ``rngs``, ``mutable`` (other
        collections), or the module's own keyword arguments such as ``train=False``).

    Returns:
      A dict from the path of the layer (``'Dense_0'``, ``'Block_0/Conv_1'``; ``'<root>'`` when
      ``module`` itself is a captured layer; ``'Block_0/name'`` for sown values) to its
      :class:`ActivationStats`, in the order the layers ran.

    Raises:
      ValueError: if ``apply_kwargs`` sets ``capture_intermediates``, or one layer produced
        outputs with different unit counts.
    """
    if "capture_intermediates" in apply_kwargs:
        raise ValueError("activation_stats sets capture_intermediates itself; do not pass it")
    layer_types = tuple(layer_types)

    def capture(mdl: nn.Module, method_name: str) -> bool:
        return method_name == _CALL and isinstance(mdl, layer_types)

    variables = {k: v for k, v in variables.items() if k != "intermediates"}
    mutable = apply_kwargs.pop("mutable", False)
    if mutable is False:
        mutable = ["intermediates"]
    _, state = module.apply(
        variables, inputs, capture_intermediates=capture, mutable=mutable, **apply_kwargs
    )
    found: dict[str, list[jax.Array]] = {}
    _collect(state.get("intermediates", {}), (), activation, found)
    return {name: _stats(values, tau, name) for name, values in found.items()}


def activation_tree(
    params: PyTree,
    stats: Mapping[str, ActivationStats] | None,
    filter: Callable[[tuple, Any], bool] | None = None,
) -> PyTree:
    """Maps :func:`activation_stats`' per-layer results onto the params tree.

    A kernel leaf at path ``.../Dense_0/kernel`` takes the statistics of layer ``Dense_0``
    (a key of ``stats`` equal to the kernel's parent path, or a suffix of it, so that a
    leading ``params/`` does not matter). Its entry is the ReDo dormant score of its output
    units (float32 ``[units]``, the kernel's last axis); leaves that are not kernels, or whose
    layer has no statistics, hold the scalar ``0.0`` placeholder.

    Args:
      params: the parameter tree.
      stats: the dict returned by :func:`activation_stats` (``None``: all placeholders).
      filter: ``(path, leaf) -> bool`` choosing the leaves that get statistics; default: the
        pruning default (floating leaves with ``ndim >= 2``).

    Returns:
      A tree with the params' structure.

    Raises:
      ValueError: if a layer's unit count differs from its kernel's last axis.
    """
    from emrakul._tree import default_filter, path_str

    filter = filter or default_filter
    stats = dict(stats or {})

    def one(path, leaf):
        if not filter(path, leaf):
            return jnp.float32(0.0)
        parts = path_str(path).split("/")[:-1]
        for start in range(len(parts)):
            name = "/".join(parts[start:])
            if name in stats:
                score = stats[name].dormant_score
                if score.shape[-1:] != jnp.shape(leaf)[-1:]:
                    raise ValueError(
                        f"layer '{name}' has {score.shape[-1]} units but the kernel at "
                        f"'{path_str(path)}' has {jnp.shape(leaf)[-1]} outputs"
                    )
                return score.astype(jnp.float32)
        return jnp.float32(0.0)

    return jax.tree_util.tree_map_with_path(one, params)
