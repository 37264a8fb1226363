"""How operations that move, cut, pad or reshape axes carry the units of their operands.

Rules of :mod:`emrakul.export.graph_rules` for ``broadcast_in_dim`` (new axes are free),
``reshape`` (merged axes carry every component; a split makes each outer block one unit:
GroupNorm's groups, heads made by reshaping), ``transpose``, ``squeeze``, ``concatenate`` (the
operands' positions side by side), ``pad`` / ``reduce_window`` / ``dynamic_slice`` (a unit axis
mixed by a window is fixed), ``slice`` / ``split`` / ``rev`` (positions taken) and ``gather`` (an
embedding lookup: the table's uncollapsed axes map to the output). Each rule takes
``(labels, eqn, axes, prov, rec)`` and returns ``[(output axes, output provenance)]`` or None
(not seen through).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emrakul.export.graph_labels import (
    Axis,
    Labels,
    fixed_axis,
    merge,
    pure_fixed,
    reshape_groups,
    take,
    unify,
)

COUPLED = "coupled to a model input, a spatial axis or a constant of fixed size"


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.aval.shape)


def _broadcast(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    out: list[Axis] = [(labels.new(n, broadcast=True),) if n > 1 else () for n in shape]
    pv = [frozenset()] * len(shape)
    for i, d in enumerate(dims):
        if _shape(eqn.invars[0])[i] == shape[d]:
            out[d], pv[d] = axes[0][i], prov[0][i]
    return [(out, tuple(pv))]


def _reshape(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list | None:
    if eqn.params.get("dimensions") is not None:
        return None
    old, new = _shape(eqn.invars[0]), tuple(eqn.params["new_sizes"])
    groups = reshape_groups(old, new)
    if groups is None:
        return None
    out: list[Axis] = [()] * len(new)
    pv = [frozenset()] * len(new)
    for i, n in enumerate(old):
        if n == 1 and axes[0][i] and not pure_fixed(axes[0][i]):
            labels.fix(axes[0][i], "a unit axis of length 1 dropped by a reshape")
    for gi, gj in groups:
        if len(gj) == 1:
            out[gj[0]] = merge([axes[0][i] for i in gi], [old[i] for i in gi])
            pv[gj[0]] = frozenset().union(*(prov[0][i] for i in gi))
            continue
        for j in gj:
            out[j] = fixed_axis(new[j])
        src = [axes[0][i] for i in gi]
        free = [c for a in src for c in a if c.any()]
        if len(gi) == 1 and len(src[0]) == 1 and free:  # a split: units are the outer blocks
            out[gj[0]] = _split_outer(labels, free[0], new[gj[0]])
        else:
            for a in src:
                labels.fix(a, "a reshape that splits a merged unit axis")
    return [(out, tuple(pv))]


def _split_outer(labels: Labels, comp: np.ndarray, outer: int) -> Axis:
    """Splitting an axis into ``[outer, inner...]`` (heads and head dims, GroupNorm's groups):
    each outer block becomes one unit (its inner positions coupled), the inner axes are fixed."""
    blocks = comp.reshape(outer, -1)
    for k in range(1, blocks.shape[1]):
        labels.union(blocks[:, 0], blocks[:, k])
    return (blocks[:, 0].copy(),)


def _transpose(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    perm = eqn.params["permutation"]
    return [([axes[0][p] for p in perm], tuple(prov[0][p] for p in perm))]


def _squeeze(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    drop = set(d % len(axes[0]) for d in eqn.params["dimensions"])
    keep = [i for i in range(len(axes[0])) if i not in drop]
    return [([axes[0][i] for i in keep], tuple(prov[0][i] for i in keep))]


def _concatenate(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    d = eqn.params["dimension"]
    shape = _shape(eqn.outvars[0])
    parts = []
    for op, v in zip(axes, eqn.invars, strict=True):
        comps = [c for c in op[d] if c.any()]
        if len(comps) > 1:
            labels.fix(op[d], "a merged axis concatenated")
        parts.append(comps[0] if len(comps) == 1 else np.zeros(_shape(v)[d], np.int64))
    out = [
        unify(labels, [op[i] for op in axes], COUPLED) if i != d else (np.concatenate(parts),)
        for i in range(len(shape))
    ]
    return [(out, (frozenset(),) * len(out))]


def _windowed(labels: Labels, eqn: Any, axes: list, windows: list[bool]) -> list:
    """Axes flagged in ``windows`` are mixed (fixed); the others pass through."""
    out = []
    for i, (a, mixed) in enumerate(zip(axes[0], windows, strict=True)):
        if mixed:
            if a and not pure_fixed(a):
                labels.fix(a, f"{eqn.primitive.name} along a unit axis")
            out.append(fixed_axis(_shape(eqn.outvars[0])[i]))
        else:
            out.append(a)
    return [(out, (frozenset(),) * len(out))]


def _pad(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    cfg = eqn.params["padding_config"]
    return _windowed(labels, eqn, axes, [any(c) for c in cfg])


def _reduce_window(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list | None:
    if len(eqn.outvars) != 1:
        return None
    p = eqn.params
    mixed = [
        w != 1 or s != 1 or tuple(pd) != (0, 0)
        for w, s, pd in zip(p["window_dimensions"], p["window_strides"], p["padding"], strict=True)
    ]
    return _windowed(labels, eqn, axes[:1], mixed)


def _slice(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    p = eqn.params
    strides = p["strides"] or (1,) * len(axes[0])
    out = []
    for a, s, e, st in zip(axes[0], p["start_indices"], p["limit_indices"], strides, strict=True):
        if st != 1 and a and not pure_fixed(a):
            labels.fix(a, "a strided slice along a unit axis")
            a = fixed_axis(len(a[0]))
        out.append(take(a, np.arange(s, e, st)))
    return [(out, (frozenset(),) * len(out))]


def _dynamic_slice(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    old = _shape(eqn.invars[0])
    return _windowed(
        labels, eqn, axes[:1], [s != n for s, n in zip(eqn.params["slice_sizes"], old, strict=True)]
    )


def _split(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    d, start, outs = eqn.params["axis"], 0, []
    for size in eqn.params["sizes"]:
        out = list(axes[0])
        out[d] = take(out[d], np.arange(start, start + size)) if out[d] else ()
        outs.append((out, (frozenset(),) * len(out)))
        start += size
    return outs


def _rev(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list:
    out = list(axes[0])
    for d in eqn.params["dimensions"]:
        out[d] = take(out[d], np.arange(len(out[d][0]))[::-1]) if out[d] else ()
    return [(out, (frozenset(),) * len(out))]


def _gather(labels: Labels, eqn: Any, axes: list, prov: list, rec: Any) -> list | None:
    """An embedding lookup: the table's uncollapsed full-size axes map to the offset dims."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    if dn.operand_batching_dims:
        return None
    shape = _shape(eqn.invars[0])
    kept = [i for i in range(len(shape)) if i not in dn.collapsed_slice_dims]
    out_shape = _shape(eqn.outvars[0])
    out: list[Axis] = [fixed_axis(n) for n in out_shape]
    for i, d in zip(kept, dn.offset_dims, strict=True):
        if sizes[i] == shape[i]:
            out[d] = axes[0][i]
        elif axes[0][i] and not pure_fixed(axes[0][i]):
            labels.fix(axes[0][i], "a partial gather along a unit axis")
    for i in dn.collapsed_slice_dims:
        if axes[0][i] and not pure_fixed(axes[0][i]):
            labels.fix(axes[0][i], "a gather's indexed axis")
    return [(out, (frozenset(),) * len(out))]


LAYOUT_RULES: dict[str, Any] = {
    "broadcast_in_dim": _broadcast,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "concatenate": _concatenate,
    "pad": _pad,
    "reduce_window_max": _reduce_window,
    "reduce_window_min": _reduce_window,
    "reduce_window_sum": _reduce_window,
    "reduce_window": _reduce_window,
    "slice": _slice,
    "dynamic_slice": _dynamic_slice,
    "split": _split,
    "rev": _rev,
    "gather": _gather,
}
