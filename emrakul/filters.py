"""Filters: choose which leaves of a parameter tree Emrakul prunes, by their path.

A filter is any ``(path, leaf) -> bool`` callable (``path`` a ``jax.tree_util`` key path), passed
as ``emrakul.wrap(..., filter=...)``. A leaf's path is written as :func:`emrakul._tree.path_str`
writes it, its keys joined by ``/``:

* Flax Linen: ``Dense_0/kernel``, ``Encoder_0/Dense_1/bias``;
* Flax NNX state (``nnx.state(model, nnx.Param)``): ``l1/kernel/value``, ``layers/0/kernel/value``
  (every NNX variable ends in ``/value``, its payload; :func:`regex` matches a pattern written
  with or without that suffix);
* Equinox (``eqx.partition(model, eqx.is_inexact_array)[0]``): ``layers/0/weight``.

:func:`regex` is the usual tool::

    emrakul.filters.regex(r"Dense_[0-2]/kernel")        # the kernels of the first three layers
    emrakul.filters.regex(r"kernel", exclude=r"head")   # every kernel but the head's
    emrakul.filters.regex([r"conv", r"dense"], min_ndim=4)

:func:`selected` lists the paths a filter picks, to check one before training.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from emrakul._tree import Filter, PyTree, default_filter, is_floating, path_str

default = default_filter
"""The default filter: floating leaves with ``ndim >= 2`` (Dense/Conv kernels)."""


def _compile(patterns: str | Sequence[str] | None, name: str) -> tuple[re.Pattern, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = (patterns,)
    elif not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"{name} must be a regular expression (str) or a sequence of them, got {patterns!r}"
        )
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"invalid regular expression in {name}: {p!r} ({e})") from e
    return tuple(compiled)


def _names(path: tuple) -> tuple[str, ...]:
    """The path as written, plus the same without an NNX variable's trailing ``/value``."""
    full = path_str(path)
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        return (full, path_str(path[:-1]))
    return (full,)


@dataclasses.dataclass(frozen=True)
class Regex:
    """A path filter made by :func:`regex` (call it as ``filter(path, leaf)``).

    Attributes:
      include: compiled patterns; a leaf is a candidate if one of them matches its path.
      exclude: compiled patterns; a leaf is dropped if one of them matches its path.
      min_ndim: the fewest dimensions a selected leaf has.
    """

    include: tuple[re.Pattern, ...]
    exclude: tuple[re.Pattern, ...]
    min_ndim: int

    def __call__(self, path: tuple, leaf: Any) -> bool:
        if np.ndim(leaf) < self.min_ndim or not is_floating(leaf):
            return False
        names = _names(path)

        def hit(patterns: tuple[re.Pattern, ...]) -> bool:
            return any(p.search(n) for p in patterns for n in names)

        return hit(self.include) and not hit(self.exclude)

    def __repr__(self) -> str:
        inc = [p.pattern for p in self.include]
        exc = [p.pattern for p in self.exclude]
        return f"regex(include={inc}, exclude={exc}, min_ndim={self.min_ndim})"


def regex(
    include: str | Sequence[str],
    exclude: str | Sequence[str] | None = None,
    *,
    min_ndim: int = 2,
) -> Regex:
    """A filter selecting the leaves whose path matches ``include`` and not ``exclude``.

    Patterns are Python regular expressions matched with ``re.search`` (anywhere in the path;
    anchor with ``^``/``$``) against the leaf's path as ``a/b/kernel``. Only floating leaves with
    at least ``min_ndim`` dimensions are selected, so a pattern that also matches biases or
    integer counters does not make them pruned.

    Examples::

        regex(r"Dense_[0-2]/kernel")           # Linen: the first three Dense kernels
        regex(r"kernel", exclude=r"head")      # every kernel except the head's
        regex(r"^l1/kernel$")                  # NNX: `l1/kernel/value` (the suffix is optional)
        regex(r"layers/0/weight")              # Equinox MLP: the first layer only
        regex([r"conv", r"dense"], exclude=[r"head", r"embed"])

    Args:
      include: a pattern or a sequence of patterns; a leaf matching any of them is a candidate.
      exclude: ``None`` or a pattern / sequence of patterns; a leaf matching any is not selected.
      min_ndim: the fewest dimensions of a selected leaf, at least 1 (default 2: kernels,
        not biases or norm scales).

    Returns:
      A :class:`Regex` filter, a ``(path, leaf) -> bool`` callable for ``emrakul.wrap``.

    Raises:
      ValueError: an invalid regular expression (the message names it), an empty ``include``
        or ``min_ndim < 1``.
      TypeError: a pattern that is not a string.
    """
    inc = _compile(include, "include")
    if not inc:
        raise ValueError("include must hold at least one regular expression")
    exc = _compile(exclude, "exclude")
    if isinstance(min_ndim, bool) or not isinstance(min_ndim, int | np.integer) or min_ndim < 1:
        raise ValueError(f"min_ndim must be an int >= 1 (scalars cannot be pruned), got {min_ndim}")
    return Regex(include=inc, exclude=exc, min_ndim=int(min_ndim))


def _check_filters(filters: tuple[Filter, ...], name: str) -> None:
    if not filters:
        raise ValueError(f"{name} needs at least one filter")
    for f in filters:
        if not callable(f):
            raise TypeError(f"{name}: a filter is a (path, leaf) -> bool callable, got {f!r}")


def all_of(*filters: Filter) -> Filter:
    """A filter selecting the leaves that every one of ``filters`` selects.

    Example: ``all_of(regex(r"encoder"), lambda path, leaf: leaf.shape[-1] >= 64)``.
    """
    _check_filters(filters, "all_of")
    return lambda path, leaf: all(bool(f(path, leaf)) for f in filters)


def any_of(*filters: Filter) -> Filter:
    """A filter selecting the leaves that at least one of ``filters`` selects.

    Example: ``any_of(regex(r"attention/(query|key)"), regex(r"mlp/kernel"))``.
    """
    _check_filters(filters, "any_of")
    return lambda path, leaf: any(bool(f(path, leaf)) for f in filters)


def selected(params: PyTree, filter: Filter | None = None) -> list[str]:
    """The paths of the leaves of ``params`` that ``filter`` selects (default: :data:`default`).

    Use it to check a filter before training, e.g.
    ``selected(params, regex(r"kernel", exclude=r"head"))``.
    """
    filter = default if filter is None else filter
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [path_str(p) for p, leaf in flat if filter(p, leaf)]


__all__ = ["Regex", "all_of", "any_of", "default", "regex", "selected"]
