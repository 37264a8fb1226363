"""Sparsity structures: what a mask may look like.

Structures are small, hashable NamedTuples (static metadata, never traced), in the spirit of
jaxpruner's sparsity types. Code that needs a mask calls :func:`emrakul.masks.select` with a
structure and a budget and never branches on the structure itself.

* :class:`Unstructured` - any subset of weights (Han et al. 2015).
* :class:`NM` - ``n`` kept in every group of ``m`` consecutive weights along ``axis``
  (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"; Zhou et al. 2021).
* :class:`Units` - whole output units / channels: the slices along ``axis`` are kept or dropped
  together (structured pruning, Li et al. 2017 "Pruning Filters for Efficient ConvNets").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Unstructured(NamedTuple):
    """Any subset of the weights may be kept."""


class NM(NamedTuple):
    """N:M semi-structured sparsity.

    Attributes:
      n: weights kept in each group of ``m``. ``None`` means "derive it from the budget":
        ``n = m - round(sparsity * m)``.
      m: group size (static).
      axis: the axis along which groups of ``m`` consecutive entries are formed.
    """

    n: int | None = 2
    m: int = 4
    axis: int = -1


class Units(NamedTuple):
    """Whole units (output neurons of a Dense kernel, output channels of a Conv kernel).

    Attributes:
      axis: the unit axis; every slice ``x[..., i, ...]`` along it is kept or dropped as one.
        For Flax ``Dense`` (``[in, out]``) and ``Conv`` (``[*window, in, out]``) kernels the
        output units are the last axis, the default.
    """

    axis: int = -1


Structure = Unstructured | NM | Units


def check_structure(structure: object) -> None:
    """Raises ``TypeError`` / ``ValueError`` for something that is not a valid structure."""
    if not isinstance(structure, Unstructured | NM | Units):
        raise TypeError(
            f"unknown sparsity structure {structure!r}; use emrakul.masks.Unstructured(), "
            "NM(n, m, axis) or Units(axis)"
        )
    if isinstance(structure, NM):
        if not isinstance(structure.m, int) or structure.m < 1:
            raise ValueError(f"NM: m must be a positive Python int, got {structure.m!r}")
        if structure.n is not None and not 0 <= structure.n <= structure.m:
            raise ValueError(f"NM: need 0 <= n <= m, got n={structure.n}, m={structure.m}")


def _check_axis(structure: NM | Units, shape: tuple[int, ...], name: str) -> int:
    axis = structure.axis
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TypeError(f"{name}: {structure} needs an int axis, got {axis!r}")
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name} of shape {shape} does not fit {structure}: axis {axis} is out of range for "
            f"{ndim} dimension(s)"
        )
    return int(axis) % ndim


def check_fits(structure: Structure, shape: Sequence[int], name: str = "leaf") -> None:
    """Raises ``ValueError`` when ``structure`` cannot be laid on an array of ``shape``.

    N:M groups need an in-range axis whose length is a multiple of ``m``; units need an
    in-range axis. Run it on static shapes, before tracing, so that a structure that does not
    fit a layer is reported with the layer's name instead of failing inside a compiled step.

    Args:
      structure: a valid structure (see :func:`check_structure`).
      shape: the shape of the pruned array.
      name: how to call the array in the message, e.g. its path ``Dense_0/kernel``.

    Raises:
      ValueError: an axis out of range, or an N:M axis length that is not a multiple of ``m``.
      TypeError: an axis that is not an int.
    """
    check_structure(structure)
    shape = tuple(int(d) for d in shape)
    if isinstance(structure, Unstructured):
        return
    axis = _check_axis(structure, shape, name)
    if isinstance(structure, NM) and shape[axis] % structure.m:
        raise ValueError(
            f"{name} of shape {shape} does not fit {structure}: its length {shape[axis]} along "
            f"axis {axis} is not a multiple of m={structure.m}"
        )
