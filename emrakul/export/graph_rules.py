"""How each JAX primitive couples the axes of its operands and results.

:func:`walk` interprets a jaxpr over :mod:`~emrakul.export.graph_labels` axes: elementwise
operations couple their operands position by position, ``dot_general`` couples contracted and
batch axes, a convolution couples the input's features with the kernel's input features (per
position within a group when grouped; a depthwise channel with its outputs), reductions drop
axes (and are remembered), the layout operations (reshapes, broadcasts, slices, concatenations,
pools, gathers) follow :mod:`~emrakul.export.graph_layout`, and calls
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
    pure_fixed,
    take,
    unify,
)
from emrakul.export.graph_layout import COUPLED, LAYOUT_RULES, _shape

Prov = tuple[frozenset, ...]
_COUPLED = COUPLED

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


_RULES: dict[str, Any] = {
    **LAYOUT_RULES,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "cumsum": _cumulative,
    "cumprod": _cumulative,
    "cummax": _cumulative,
    "cummin": _cumulative,
    "cumlogsumexp": _cumulative,
    **{name: _reduce for name in _REDUCE},
}
