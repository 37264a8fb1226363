"""Compaction: physically removing dead units of a sequential ``Dense`` / ``Conv`` stack.

Training keeps every weight in a dense array and multiplies by a mask, so a pruned model is as
large and as slow as the dense one. :func:`compact` removes dead output units / channels together
with the matching input rows of the layer that consumes them, and :func:`compact_model` builds the
smaller Flax module. Structured pruning pays off on any hardware, because the matmuls themselves
shrink (Li et al. 2017, "Pruning Filters for Efficient ConvNets"). Output shapes depend on the
mask values, so this runs on the host in numpy after training and is not jitted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree
from emrakul.export.resolve import resolve_masks
from emrakul.export.stack import activation_fn, consumer_view, layer_names


class Compacted(NamedTuple):
    """The result of :func:`compact`.

    Attributes:
      params: the smaller dense params (same layer names; masked entries are zero, so the model
        needs no mask), wrapped in ``{"params": ...}`` if the input was.
      masks: the masks restricted to the kept units (bool arrays / scalar True markers), to keep
        training the compact model with the same sparsity pattern (a pruned bias entry that
        received a folded constant is marked kept).
      widths: the new output width of every layer but the last, in layer order (for
        ``hosts.MLP`` the new ``features``; for ``hosts.CNN1D`` the channels, then ``hidden``).
      kept: layer name -> int array of the original indices of its kept output units.
      retained_dead: layer name -> number of dead units that had to be kept (a dead conv channel
        with ``act(bias) != 0`` feeding another conv: see :func:`compact`).
    """

    params: dict
    masks: dict
    widths: tuple[int, ...]
    kept: dict[str, np.ndarray]
    retained_dead: dict[str, int]


class _Work(NamedTuple):
    """The stack's arrays while units are removed: layer name -> numpy array per field."""

    w: dict[str, np.ndarray]
    wm: dict[str, np.ndarray]
    b: dict[str, np.ndarray]
    bm: dict[str, np.ndarray]
    has_bias: dict[str, bool]


def _read_stack(names: list[str], eff: Mapping, mask_tree: Mapping, keys: dict) -> _Work:
    """Writable copies of every layer's kernel, bias and their masks (a missing bias is zero)."""
    work = _Work({}, {}, {}, {}, {})
    for name in names:
        layer, lmask = eff[keys[name]], mask_tree[keys[name]]
        work.w[name] = np.array(layer["kernel"])
        work.wm[name] = np.broadcast_to(lmask["kernel"], work.w[name].shape).copy()
        work.has_bias[name] = "bias" in layer
        out = work.w[name].shape[-1]
        has = work.has_bias[name]
        work.b[name] = np.array(layer["bias"]) if has else np.zeros(out, work.w[name].dtype)
        work.bm[name] = np.broadcast_to(lmask["bias"] if has else True, (out,)).copy()
    return work


def _remove_units(work: _Work, prev: str, nxt: str, act: Callable) -> tuple[np.ndarray, int]:
    """Removes ``prev``'s removable units and ``nxt``'s matching input rows in ``work``.

    Returns:
      ``(indices of prev's kept units, number of dead units that had to stay)``.
    """
    w, wm, b, bm = work.w, work.wm, work.b, work.bm
    width = w[prev].shape[-1]
    next_shape = w[nxt].shape
    view = consumer_view(prev, nxt, w[nxt], width).copy()
    mview = consumer_view(prev, nxt, wm[nxt], width).copy()
    dead = ~wm[prev].reshape(-1, width).any(axis=0)
    unused = ~mview.any(axis=(0, 2))
    const = act(b[prev]).astype(np.float64)
    foldable = nxt.startswith("Dense") and work.has_bias[nxt]
    fold = dead & ~unused & (const != 0) & foldable
    remove = unused | (dead & ((const == 0) | foldable))
    if fold.any():
        delta = np.einsum("pjo,j->o", view[:, fold].astype(np.float64), const[fold])
        b[nxt] = (b[nxt].astype(np.float64) + delta).astype(b[nxt].dtype)
        bm[nxt] |= delta != 0  # a folded constant makes a masked bias entry live
    if remove.all():  # keep one placeholder with zero outgoing weights
        remove[0] = False
        view[:, 0] = 0
        mview[:, 0] = False
    keep = np.flatnonzero(~remove)
    w[prev], wm[prev] = w[prev][..., keep], wm[prev][..., keep]
    b[prev], bm[prev] = b[prev][keep], bm[prev][keep]
    new_next = (*next_shape[:-2], -1, next_shape[-1])
    w[nxt] = view[:, keep].reshape(new_next)
    wm[nxt] = mview[:, keep].reshape(new_next)
    return keep, int(np.sum(dead & ~remove))


def _assemble(work: _Work, names: list[str], mask_tree: Mapping, keys: dict) -> tuple[dict, dict]:
    """The compact params and masks; leaves unpruned on input stay ``True`` markers."""
    new_params, new_masks = {}, {}
    for name in names:
        lmask = mask_tree[keys[name]]
        new_params[keys[name]] = {"kernel": jnp.asarray(work.w[name])}
        kmask = work.wm[name] if np.ndim(lmask["kernel"]) else np.bool_(True)
        new_masks[keys[name]] = {"kernel": kmask}
        if work.has_bias[name]:
            new_params[keys[name]]["bias"] = jnp.asarray(work.b[name])
            bmask = work.bm[name] if np.ndim(lmask["bias"]) else np.bool_(True)
            new_masks[keys[name]]["bias"] = bmask
    return new_params, new_masks


def compact(
    params: PyTree, masks: Any, *, activation: str | Callable[[jax.Array], jax.Array] = "relu"
) -> Compacted:
    """Removes dead output units / channels of a sequential Dense / Conv stack.

    The stack is ``Conv*_0 ... Conv*_k`` (optional; kernels ``[*window, in, out]``) then
    ``Dense_0 ... Dense_L`` (kernels ``[in, out]``), each with an optional ``bias``, as in
    ``hosts.MLP`` and ``hosts.CNN1D``. A unit is *dead* when its whole output column of the
    kernel is masked (not ALIVE). It still emits the constant ``act(bias)``, so it is removed
    only when that leaves the outputs unchanged:

    * ``act(bias) == 0``: dropped with its consumer's input rows;
    * the consumer is a Dense layer (directly, or after the flatten of a conv map): dropped, and
      the constant is folded into the consumer's bias, ``b_next += act(b_dead) @ W_next[rows]``;
    * the consumer is a conv: *kept* (its zero padding makes the constant's contribution depend
      on the position, so it is not a bias), counted in ``retained_dead``.

    A unit whose consumer rows are all masked is removed too (it contributes nothing). The last
    layer's units are never removed. If every unit of a layer would go, one is kept with zero
    outgoing weights, so no width is zero.

    Assumptions (not checkable from the params; the outputs are wrong if they do not hold):
    every hidden layer's output goes through the same elementwise ``activation`` and nothing
    else, except for conv maps a per-channel pooling that maps a constant map to that constant
    (max or average pooling) and, before the first Dense, a flatten of ``[positions, channels]``
    (channels minor), as in ``hosts.CNN1D``. Dense -> conv transitions, mixed conv kinds,
    non-consecutive layer names, other leaves (norm scales...) and shape mismatches between
    consecutive layers raise ``ValueError`` rather than being guessed.

    Args:
      params: the dense params (a dict of layers, or ``{"params": {...}}``).
      masks: a mask tree, lifecycle state tree, ``Lifecycle`` or the wrapper's optimizer state
        (see :func:`~emrakul.export.resolve_masks`); may also be wrapped in ``{"params": ...}``.
      activation: ``"relu"`` (the hosts'), ``"tanh"``, ``"identity"`` or a jnp function.

    Returns:
      A :class:`Compacted`; the compact model computes the same function as the masked one.

    Raises:
      ValueError: a graph this function cannot compact (reason named), or bad masks.
    """
    wrapped = isinstance(params, Mapping) and set(params) == {"params"}
    if wrapped:
        params = params["params"]
        if isinstance(masks, Mapping) and set(masks) == {"params"}:
            masks = masks["params"]
    act = activation_fn(activation)
    names = layer_names(params)  # validate before touching the masks
    eff, mask_tree = resolve_masks(params, masks)
    keys = {str(k): k for k in eff}
    work = _read_stack(names, eff, mask_tree, keys)
    kept, retained = {}, {}
    for prev, nxt in itertools.pairwise(names):
        kept[prev], retained[prev] = _remove_units(work, prev, nxt, act)
    kept[names[-1]] = np.arange(work.w[names[-1]].shape[-1])
    retained[names[-1]] = 0
    new_params, new_masks = _assemble(work, names, mask_tree, keys)
    widths = tuple(int(work.w[name].shape[-1]) for name in names[:-1])
    if wrapped:
        new_params, new_masks = {"params": new_params}, {"params": new_masks}
    return Compacted(new_params, new_masks, widths, kept, retained)


def compact_model(module: Any, compacted: Compacted) -> Any:
    """The Flax module of the compact network: ``hosts.MLP`` or ``hosts.CNN1D`` with new widths.

    Args:
      module: the original ``emrakul.lab.hosts.MLP`` or ``emrakul.lab.hosts.CNN1D``.
      compacted: the result of :func:`compact` on its params.

    Returns:
      A module whose ``apply({"params": compacted.params}, x)`` (or ``apply(compacted.params,
      x)`` if the params were wrapped) equals the masked original's output.

    Raises:
      ValueError: another module type, or a layer count that does not match.
    """
    from emrakul.lab.hosts.classifier import CNN1D, MLP  # imported on use: hosts load the data code

    widths = tuple(compacted.widths)
    if isinstance(module, MLP):
        if len(widths) != len(module.features):
            raise ValueError(f"MLP has {len(module.features)} hidden layers, got widths {widths}")
        return MLP(features=widths, num_classes=module.num_classes)
    if isinstance(module, CNN1D):
        if len(widths) != len(module.channels) + 1:
            raise ValueError(
                f"CNN1D has {len(module.channels)} conv layers + 1 hidden, got widths {widths}"
            )
        return CNN1D(
            channels=widths[:-1],
            kernel_size=module.kernel_size,
            hidden=widths[-1],
            num_classes=module.num_classes,
        )
    raise ValueError(
        f"compact_model knows hosts.MLP and hosts.CNN1D, not {type(module).__name__}; build the "
        "module yourself from Compacted.widths"
    )
