"""Element labels for the dependency graph: a union-find over the units of every traced axis.

Every axis of every value in a traced program carries *components*: integer arrays as long as
the axis, naming for each position the element (unit) it belongs to. Element 0 is ``FIXED``: a
position that must not be removed (a model input, a spatial axis, a constant of fixed size). An
axis with no components is *wild* (a broadcast size-1 axis): it couples to nothing. A larger axis
a broadcast creates gets new elements marked as broadcast-made: they take the units of whatever
they meet (so a compact replay knows their size) but never merge two units. An axis made by
merging several (a flattened conv map) carries one component per merged axis; a position
disappears when any of its components is removed, so only the non-fixed components couple.
Fixes found during the pass (an operation the graph cannot see through, a model output) are
deferred with a reason and applied at the end, so the report can say why a group is intact
(Fang et al. 2023, "DepGraph: Towards Any Structural Pruning", builds the same grouping on a
PyTorch graph; here the jaxpr is the graph).
"""

from __future__ import annotations

import numpy as np

Axis = tuple[np.ndarray, ...]


class Labels:
    """A union-find over elements, with deferred fixes and the reductions seen over them."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]
        self.fresh: set[int] = set()
        self.deferred: list[tuple[np.ndarray, str]] = []
        self.reduced: list[tuple[np.ndarray, str]] = []

    def new(self, n: int, broadcast: bool = False) -> np.ndarray:
        """``n`` new elements (``broadcast``: of an axis a broadcast created, which couples only
        where nothing else does: see :func:`unify`)."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if broadcast:
            self.fresh.update(range(start, start + n))
        return np.arange(start, start + n)

    def broadcast_made(self, comp: np.ndarray) -> bool:
        """Whether ``comp`` came from a broadcast (judged by its first non-fixed element)."""
        nz = comp[comp != 0]
        return bool(len(nz)) and int(nz[0]) in self.fresh

    def find(self, i: int) -> int:
        """The root of element ``i`` (with path halving)."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couples ``a[i]`` with ``b[i]`` for every position ``i`` (0 always stays a root)."""
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx == ry:
                continue
            if rx == 0 or (ry != 0 and rx < ry):
                self.parent[ry] = rx
            else:
                self.parent[rx] = ry

    def roots(self, a: np.ndarray) -> np.ndarray:
        """The root of every element of ``a``."""
        return np.fromiter((self.find(x) for x in a.tolist()), np.int64, len(a))

    def fix(self, axis: Axis, reason: str) -> None:
        """Defers fixing every non-fixed component of ``axis``, remembering why."""
        for comp in axis:
            if comp.any():
                self.deferred.append((comp, reason))

    def fixed_roots(self) -> dict[int, set[str]]:
        """Root -> the reasons it is fixed, after all couplings (call once, at the end)."""
        reasons: dict[int, set[str]] = {}
        for comp, reason in self.deferred:
            for r in set(self.roots(comp).tolist()):
                reasons.setdefault(r, set()).add(reason)
        reasons.pop(0, None)
        return reasons


def fixed_axis(n: int) -> Axis:
    """An axis of ``n`` fixed positions (model inputs, spatial axes, constants)."""
    return (np.zeros(n, np.int64),)


def pure_fixed(axis: Axis) -> bool:
    """True when every component is fixed: no position of the axis can ever be removed."""
    return bool(axis) and not any(comp.any() for comp in axis)


def unify(labels: Labels, axes: list[Axis], reason: str) -> Axis:
    """Couples axes of equal length position by position; returns the coupled axis.

    Wild axes are skipped. A purely fixed axis fixes everything coupled to it (``reason``). An
    axis with several non-fixed components couples them all (conservative: the union-find
    cannot express "removed with either"), except components a broadcast made next to others
    (e.g. GroupNorm's statistics repeated over a group's channels), which would merge units.
    """
    real = [a for a in axes if a]
    if not real:
        return ()
    if any(pure_fixed(a) for a in real):
        for a in real:
            labels.fix(a, reason)
        return next(a for a in real if pure_fixed(a))
    per_axis = []
    for a in real:
        comps = [c for c in a if c.any()]
        own = [c for c in comps if not labels.broadcast_made(c)]
        per_axis.append(own if own else comps)
    free = _one_part_each(labels, per_axis)
    for comp in free[1:]:
        labels.union(free[0], comp)
    return real[0]


def _one_part_each(labels: Labels, per_axis: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The components to couple: every single-component axis's, and of each merged axis the
    part that matches them one to one (an im2col kernel's input channel, not its window tap),
    else its outermost part (whole heads of flattened heads); its other parts are fixed. With no
    single-component axis, everything couples (conservative)."""
    singles = [f[0] for f in per_axis if len(f) == 1]
    if not singles or all(len(f) <= 1 for f in per_axis):
        return [c for f in per_axis for c in f]
    anchor, chosen = singles[0], []
    for f in per_axis:
        match = [c for c in f if _one_to_one(anchor, c)]
        pick = match[0] if match else f[0]
        chosen.append(pick)
        for c in f:
            if c is not pick:
                labels.fix((c,), "a merged axis coupled through another of its parts")
    return chosen


def _one_to_one(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the positions' elements in ``a`` and ``b`` correspond one to one."""
    pairs = len(np.unique(np.stack([a, b]), axis=1)[0])
    return pairs == len(np.unique(a)) == len(np.unique(b))


def take(axis: Axis, index: np.ndarray) -> Axis:
    """The components of ``axis`` at the positions ``index`` (slices, reversals, merges)."""
    return tuple(comp[index] for comp in axis)


def merge(axes: list[Axis], sizes: list[int]) -> Axis:
    """The axis made by flattening ``axes`` (row-major): every non-wild component, re-indexed."""
    coords = np.unravel_index(np.arange(int(np.prod(sizes))), sizes)
    out: list[np.ndarray] = []
    for axis, coord in zip(axes, coords, strict=True):
        out.extend(comp[coord] for comp in axis)
    return tuple(out)


def reshape_groups(old: tuple[int, ...], new: tuple[int, ...]) -> list[tuple[list, list]] | None:
    """Pairs runs of non-unit old and new axes with equal products, or None if impossible."""
    src = [i for i, n in enumerate(old) if n != 1]
    dst = [j for j, n in enumerate(new) if n != 1]
    groups, i, j = [], 0, 0
    while i < len(src) and j < len(dst):
        gi, gj = [src[i]], [dst[j]]
        pi, pj = old[src[i]], new[dst[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(src[i])
                pi, i = pi * old[src[i]], i + 1
            elif pj < pi and j < len(dst):
                gj.append(dst[j])
                pj, j = pj * new[dst[j]], j + 1
            else:
                return None
        groups.append((gi, gj))
    return groups if i == len(src) and j == len(dst) else None
