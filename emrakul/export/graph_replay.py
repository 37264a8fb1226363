"""Replaying a walked jaxpr with units removed: the compact model's program.

A compacted model cannot always run through its original apply function (a Linen ``Dense``
checks that its kernel has the declared width; many modules hard-code sizes). Instead the traced
program itself is re-run on the smaller arrays: every equation is bound again with its shape
parameters (``reshape``'s sizes, ``broadcast_in_dim``'s shape, slice bounds) recomputed from the
positions that survive. Literals keep their values, so a mean over units still divides by the
original width: the compact program computes exactly what the masked one did, without the dead
positions (LayerNorm and attention scaling included).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emrakul.export.graph_labels import Axis
from emrakul.export.graph_rules import Trace, read


def alive(axis: Axis, dead: np.ndarray) -> np.ndarray | None:
    """Which positions of ``axis`` survive (None for a wild axis: it keeps its size)."""
    if not axis:
        return None
    keep = np.ones(len(axis[0]), bool)
    for comp in axis:
        keep &= ~dead[comp]
    return keep


def _size(trace: Trace, v: Any, d: int, dead: np.ndarray) -> int:
    keep = alive(read(trace.axes, v)[d], dead)
    return int(v.aval.shape[d]) if keep is None else int(keep.sum())


def _resized(eqn: Any, trace: Trace, dead: np.ndarray) -> dict:
    """The equation's params with shape parameters recomputed for the surviving positions."""
    name, p = eqn.primitive.name, dict(eqn.params)
    out = eqn.outvars[0]
    if name == "reshape":
        p["new_sizes"] = tuple(_size(trace, out, d, dead) for d in range(len(out.aval.shape)))
    elif name == "broadcast_in_dim":
        p["shape"] = tuple(_size(trace, out, d, dead) for d in range(len(out.aval.shape)))
    elif name == "split":
        p["sizes"] = tuple(_size(trace, o, p["axis"], dead) for o in eqn.outvars)
    elif name == "slice":
        starts, limits = [], []
        for d, (s, e) in enumerate(zip(p["start_indices"], p["limit_indices"], strict=True)):
            keep = alive(read(trace.axes, eqn.invars[0])[d], dead)
            keep = np.ones(eqn.invars[0].aval.shape[d], bool) if keep is None else keep
            starts.append(int(keep[:s].sum()))
            limits.append(starts[-1] + int(keep[s:e].sum()))
        p["start_indices"], p["limit_indices"] = tuple(starts), tuple(limits)
    elif name == "conv_general_dilated" and p["feature_group_count"] > 1:
        lspec, rspec, _ = p["dimension_numbers"]
        if eqn.invars[1].aval.shape[rspec[1]] == 1:  # depthwise: groups go with their channel
            p["feature_group_count"] = _size(trace, eqn.invars[0], lspec[1], dead)
    elif name in ("dynamic_slice", "gather"):
        src = eqn.invars[0]
        full = src.aval.shape
        p["slice_sizes"] = tuple(
            _size(trace, src, d, dead) if s == full[d] else s
            for d, s in enumerate(p["slice_sizes"])
        )
    return p


def replay(trace: Trace, dead: np.ndarray, invals: list) -> list:
    """Evaluates ``trace``'s jaxpr on compact inputs, with units whose elements are dead gone.

    Args:
      trace: a walked jaxpr (:func:`emrakul.export.graph_rules.walk`).
      dead: bool per element of the walk's labels: True where the element's unit is removed.
      invals: the compact inputs (jax or numpy arrays), in the jaxpr's invar order.

    Returns:
      The outputs, in the jaxpr's outvar order. Works under ``jax.jit``.
    """
    jaxpr = trace.jaxpr
    env: dict[Any, Any] = dict(zip(jaxpr.invars, invals, strict=True))
    env.update(zip(jaxpr.constvars, trace.consts, strict=True))

    def get(v: Any) -> Any:
        return v.val if hasattr(v, "val") else env[v]

    for idx, eqn in enumerate(jaxpr.eqns):
        ins = [get(v) for v in eqn.invars]
        if idx in trace.calls:
            outs = replay(trace.calls[idx], dead, ins)
        else:
            outs = eqn.primitive.bind(*ins, **_resized(eqn, trace, dead))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [get(v) for v in jaxpr.outvars]
