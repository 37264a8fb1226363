"""How each JAX primitive couples the axes of its operands and results.

:func:`walk` interprets a jaxpr over :mod:`~emrakul.export.graph_labels` axes: elementwise
operations couple their operands position by position, ``dot_general`` couples contracted and
batch axes, a convolution couples the input's features with the kernel's input features (per
position within a group when grouped), reshapes merge or map axes, broadcasts create wild axes,
reductions drop axes (and are remembered: a mean over units changes when units go), and calls
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``) are walked inside. A primitive
with no rule fixes every unit it touches and is reported by name. It also tracks which parameter
axes are *consumed* (contracted: the rows a removed unit no longer feeds) as opposed to
*producing* the unit's value.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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

Prov = tuple[frozenset, ...]
_COUPLED = "coupled to a model input, a spatial axis or a constant of fixed size"

_UNARY = {
    "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "abs", "sign", "sqrt",
    "rsqrt", "cbrt", "integer_pow", "convert_element_type", "erf", "erfc", "erf_inv", "sin",
    "cos", "tan", "square", "floor", "ceil", "round", "is_finite", "not", "copy", "copy_p",
    "reduce_precision", "real", "imag", "stop_gradient", "asinh", "acosh", "atanh", "asin",
    "acos", "atan", "sinh", "cosh", "lgamma", "digamma",
}  # fmt: skip
_NARY = {
    "add", "add_any", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem", "and", "or",
    "xor", "eq", "ne", "lt", "le", "gt", "ge", "select_n", "clamp", "nextafter",
}  # fmt: skip
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
           "reduce_and", "reduce_or"}  # fmt: skip
CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class Walk(NamedTuple):
    """What a walk records besides the labels: consumed parameter axes and opaque primitives."""

    consumed: set
    opaque: list


class Trace(NamedTuple):
    """A walked jaxpr: the labels of every variable, and the walks of the calls inside it.

    Attributes:
      jaxpr: the ``Jaxpr``.
      consts: the values of its constvars.
      axes: variable -> its axes' labels (every invar, constvar and equation output).
      calls: equation index -> the :class:`Trace` of the jaxpr it calls.
    """

    jaxpr: Any
    consts: list
    axes: dict
    calls: dict


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.aval.shape)


def read(trace_axes: dict, v: Any) -> list[Axis]:
    """The axes of ``v`` (literals and unknowns are fixed)."""
    if hasattr(v, "val") or v not in trace_axes:
        return [fixed_axis(n) for n in _shape(v)]
    return trace_axes[v]


def walk(labels: Labels, closed: Any, in_axes: list, in_prov: list, rec: Walk) -> tuple:
    """Interprets ``closed`` (a ``ClosedJaxpr`` or ``Jaxpr``) from the input labels.

    Returns:
      ``(output axes, output provenance, Trace)``.
    """
    jaxpr = getattr(closed, "jaxpr", closed)
    trace = Trace(jaxpr, list(getattr(closed, "consts", [])), {}, {})
    prov: dict[Any, Prov] = {}
    for v, a, p in zip(jaxpr.invars, in_axes, in_prov, strict=True):
        trace.axes[v], prov[v] = list(a), tuple(p)
    for v in jaxpr.constvars:
        trace.axes[v] = [fixed_axis(n) for n in _shape(v)]
    for idx, eqn in enumerate(jaxpr.eqns):
        axes = [read(trace.axes, v) for v in eqn.invars]
        provs = [
            prov.get(v, (frozenset(),) * len(_shape(v))) if not hasattr(v, "val") else ()
            for v in eqn.invars
        ]
        outs = _apply(labels, eqn, axes, provs, rec, trace.calls, idx)
        for v, (a, p) in zip(eqn.outvars, outs, strict=True):
            trace.axes[v], prov[v] = a, p
    outs = [read(trace.axes, v) for v in jaxpr.outvars]
    return outs, [prov.get(v, ()) for v in jaxpr.outvars], trace


def _apply(
    labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk, calls: dict, idx: int
) -> list:
    """Dispatches one equation to its rule; unknown primitives are opaque."""
    name = eqn.primitive.name
    out_shapes = [_shape(v) for v in eqn.outvars]
    if name in _UNARY and len(axes) == 1:
        return [(list(axes[0]), prov[0])]
    if name in _NARY:
        return [_elementwise(labels, axes, [_shape(v) for v in eqn.invars], out_shapes[0])]
    for key in CALL_PARAMS:
        if key in eqn.params and name not in ("scan", "while", "cond"):
            out_axes, out_prov, calls[idx] = walk(labels, eqn.params[key], axes, prov, rec)
            return list(zip(out_axes, out_prov, strict=True))
    rule = _RULES.get(name)
    if rule is not None:
        out = rule(labels, eqn, axes, prov, rec)
        if out is not None:
            return out
    return _opaque(labels, name, axes, out_shapes, rec)


def _opaque(labels: Labels, name: str, axes: list, out_shapes: list, rec: Walk) -> list:
    """Fixes every unit the primitive touches; its results are fixed too."""
    touched = False
    for operand in axes:
        for axis in operand:
            if axis and not pure_fixed(axis):
                labels.fix(axis, f"an operation the graph cannot see through ({name})")
                touched = True
    if touched:
        rec.opaque.append(name)
    return [([fixed_axis(n) for n in s], (frozenset(),) * len(s)) for s in out_shapes]


def _elementwise(labels: Labels, axes: list, shapes: list, shape: tuple[int, ...]) -> tuple:
    """Operands couple position by position; scalars and size-1 axes broadcast (wild)."""
    out: list[Axis] = []
    for d, n in enumerate(shape):
        cands = [
            op[d] for op, s in zip(axes, shapes, strict=True) if len(s) == len(shape) and s[d] == n
        ]
        out.append(unify(labels, cands, _COUPLED))
    return out, (frozenset(),) * len(shape)


def _broadcast(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    out: list[Axis] = [(labels.new(n, broadcast=True),) if n > 1 else () for n in shape]
    pv = [frozenset()] * len(shape)
    for i, d in enumerate(dims):
        if _shape(eqn.invars[0])[i] == shape[d]:
            out[d], pv[d] = axes[0][i], prov[0][i]
    return [(out, tuple(pv))]


def _reshape(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list | None:
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


def _transpose(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    perm = eqn.params["permutation"]
    return [([axes[0][p] for p in perm], tuple(prov[0][p] for p in perm))]


def _squeeze(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    drop = set(d % len(axes[0]) for d in eqn.params["dimensions"])
    keep = [i for i in range(len(axes[0])) if i not in drop]
    return [([axes[0][i] for i in keep], tuple(prov[0][i] for i in keep))]


def _dot_general(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = axes
    for a, b in zip(lc, rc, strict=True):
        unify(labels, [lhs[a], rhs[b]], _COUPLED)
        rec.consumed.update(prov[0][a] | prov[1][b])
    batch = [unify(labels, [lhs[a], rhs[b]], _COUPLED) for a, b in zip(lb, rb, strict=True)]
    lfree = [i for i in range(len(lhs)) if i not in lc and i not in lb]
    rfree = [i for i in range(len(rhs)) if i not in rc and i not in rb]
    out = batch + [lhs[i] for i in lfree] + [rhs[i] for i in rfree]
    return [(out, (frozenset(),) * len(out))]


def _conv(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list | None:
    p = eqn.params
    if p["batch_group_count"] != 1:
        return None
    lspec, rspec, ospec = p["dimension_numbers"]
    lhs, rhs = axes
    groups = p["feature_group_count"]
    lf, rin, rout = lhs[lspec[1]], rhs[rspec[1]], rhs[rspec[0]]
    per = _shape(eqn.invars[1])[rspec[1]]
    n_out = _shape(eqn.invars[1])[rspec[0]]
    step = n_out // groups
    if groups > 1 and per == 1:  # depthwise: input channel g and its outputs are one unit
        for m in range(step):
            unify(labels, [lf, take(rout, np.arange(m, n_out, step))], _COUPLED)
    else:  # input position j of every group is one unit, and so is output position m
        for g in range(groups):
            unify(labels, [take(lf, np.arange(g * per, (g + 1) * per)), rin], _COUPLED)
        for g in range(1, groups):
            unify(
                labels,
                [take(rout, np.arange(step)), take(rout, np.arange(g * step, (g + 1) * step))],
                _COUPLED,
            )
    rec.consumed.update(prov[1][rspec[1]] | prov[0][lspec[1]])
    for d in rspec[2:]:
        if rhs[d] and not pure_fixed(rhs[d]):
            labels.fix(rhs[d], "a convolution's window")
    out_shape = _shape(eqn.outvars[0])
    out: list[Axis] = [fixed_axis(n) for n in out_shape]
    out[ospec[0]], out[ospec[1]] = lhs[lspec[0]], rout
    return [(out, (frozenset(),) * len(out))]


def _reduce(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    red = set(eqn.params["axes"])
    for d in red:
        for comp in axes[0][d]:
            if comp.any():
                labels.reduced.append((comp, eqn.primitive.name))
    keep = [i for i in range(len(axes[0])) if i not in red]
    return [([axes[0][i] for i in keep], tuple(frozenset() for _ in keep))]


def _cumulative(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    out = list(axes[0])
    d = eqn.params["axis"]
    labels.fix(out[d], f"a cumulative operation along a unit axis ({eqn.primitive.name})")
    out[d] = fixed_axis(_shape(eqn.invars[0])[d])
    return [(out, (frozenset(),) * len(out))]


def _concatenate(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    d = eqn.params["dimension"]
    shape = _shape(eqn.outvars[0])
    parts = []
    for op, v in zip(axes, eqn.invars, strict=True):
        comps = [c for c in op[d] if c.any()]
        if len(comps) > 1:
            labels.fix(op[d], "a merged axis concatenated")
        parts.append(comps[0] if len(comps) == 1 else np.zeros(_shape(v)[d], np.int64))
    out = [
        unify(labels, [op[i] for op in axes], _COUPLED) if i != d else (np.concatenate(parts),)
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


def _pad(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    cfg = eqn.params["padding_config"]
    return _windowed(labels, eqn, axes, [any(c) for c in cfg])


def _reduce_window(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list | None:
    if len(eqn.outvars) != 1:
        return None
    p = eqn.params
    mixed = [
        w != 1 or s != 1 or tuple(pd) != (0, 0)
        for w, s, pd in zip(p["window_dimensions"], p["window_strides"], p["padding"], strict=True)
    ]
    return _windowed(labels, eqn, axes[:1], mixed)


def _slice(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    p = eqn.params
    strides = p["strides"] or (1,) * len(axes[0])
    out = []
    for a, s, e, st in zip(axes[0], p["start_indices"], p["limit_indices"], strides, strict=True):
        if st != 1 and a and not pure_fixed(a):
            labels.fix(a, "a strided slice along a unit axis")
            a = fixed_axis(len(a[0]))
        out.append(take(a, np.arange(s, e, st)))
    return [(out, (frozenset(),) * len(out))]


def _dynamic_slice(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    old = _shape(eqn.invars[0])
    return _windowed(
        labels, eqn, axes[:1], [s != n for s, n in zip(eqn.params["slice_sizes"], old, strict=True)]
    )


def _split(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    d, start, outs = eqn.params["axis"], 0, []
    for size in eqn.params["sizes"]:
        out = list(axes[0])
        out[d] = take(out[d], np.arange(start, start + size)) if out[d] else ()
        outs.append((out, (frozenset(),) * len(out)))
        start += size
    return outs


def _rev(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list:
    out = list(axes[0])
    for d in eqn.params["dimensions"]:
        out[d] = take(out[d], np.arange(len(out[d][0]))[::-1]) if out[d] else ()
    return [(out, (frozenset(),) * len(out))]


def _gather(labels: Labels, eqn: Any, axes: list, prov: list, rec: Walk) -> list | None:
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


_RULES: dict[str, Any] = {
    "broadcast_in_dim": _broadcast,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "cumsum": _cumulative,
    "cumprod": _cumulative,
    "cummax": _cumulative,
    "cummin": _cumulative,
    "cumlogsumexp": _cumulative,
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
    **{name: _reduce for name in _REDUCE},
}
