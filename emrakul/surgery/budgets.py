"""Per-layer target sparsities from one global target.

A run is asked for a global sparsity (the fraction of the *pruned* weights that are removed).
How that budget is spread over the layers matters as much as which weights are removed:

* ``"uniform"``: every layer gets the global target (Zhu & Gupta 2017; Gale et al. 2019).
* ``"erk"``: Erdős–Rényi-Kernel (Evci et al. 2020, "Rigging the Lottery: Making All Tickets
  Winners", generalising the Erdős–Rényi distribution of Mocanu et al. 2018, "Scalable
  training of artificial neural networks with adaptive sparse connectivity"). The density of a
  layer with kernel shape ``(d_1, ..., d_r)`` is proportional to
  ``(d_1 + ... + d_r) / (d_1 * ... * d_r)`` (for convolutions the spatial dimensions are
  included), so small layers stay denser than large ones. The common scale ``eps`` is solved so
  that the total number of kept weights is ``(1 - target) * total``; a layer whose density
  would exceed 1 is made dense and ``eps`` is re-solved over the others, repeatedly, as in the
  reference implementation of RigL (``sparse_utils.get_sparsities_erdos_renyi``).

The result is static NumPy (computed once from the shapes, before tracing); it becomes the
``target`` of the controllers' :class:`~emrakul.controllers.base.Observation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DISTRIBUTIONS = ("uniform", "erk")


def _check_shapes(
    shapes: Sequence[tuple[int, ...]], names: Sequence[str] | None
) -> list[tuple[int, ...]]:
    if names is not None and len(names) != len(shapes):
        raise ValueError(f"names must name every shape: {len(names)} names, {len(shapes)} shapes")
    out = []
    for i, shape in enumerate(shapes):
        shape = tuple(int(d) for d in shape)
        if len(shape) == 0 or min(shape) < 1:
            where = f"shapes[{i}]" if names is None else f"pruned leaf '{names[i]}' (shapes[{i}])"
            raise ValueError(
                f"{where} = {shape}: every pruned layer needs at least one dimension and "
                "no empty dimension"
            )
        out.append(shape)
    return out


def check_budget(target: float, distribution: str, erk_power_scale: float = 1.0) -> None:
    """Raises ``ValueError`` for a global target or distribution :func:`layer_sparsities`
    rejects whatever the shapes (so a caller can check them before it has any parameters)."""
    target = float(target)
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must lie in [0, 1), got target={target}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution={distribution!r}; expected one of {DISTRIBUTIONS}")
    if not erk_power_scale >= 0:
        raise ValueError(f"erk_power_scale must be >= 0, got erk_power_scale={erk_power_scale}")


def layer_sparsities(
    shapes: Sequence[tuple[int, ...]],
    target: float,
    distribution: str = "uniform",
    erk_power_scale: float = 1.0,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Per-layer sparsities whose weighted mean is the global ``target``.

    Args:
      shapes: the shapes of the pruned leaves, in flattening order.
      target: global sparsity over all pruned weights, in ``[0, 1)``.
      distribution: ``"uniform"`` or ``"erk"`` (see the module docstring).
      erk_power_scale: exponent applied to the ERK raw density (1 is ERK; 0 gives uniform
        raw densities, i.e. the uniform distribution with dense layers resolved the same way).
      names: optional, one name per shape (the leaf's path), used in error messages.

    Returns:
      float64 array ``[len(shapes)]`` of sparsities in ``[0, 1)``; with ERK,
      ``sum((1 - s_l) * n_l) == (1 - target) * sum(n_l)`` up to floating-point error.

    Raises:
      ValueError: ``target`` outside ``[0, 1)``, an unknown ``distribution``, a negative
        ``erk_power_scale`` or a shape with no or empty dimensions (named by ``names``).
    """
    check_budget(target, distribution, erk_power_scale)
    target = float(target)
    shapes = _check_shapes(shapes, names)
    num = len(shapes)
    if distribution == "uniform":
        return np.full((num,), target, np.float64)

    sizes = np.array([np.prod(s, dtype=np.float64) for s in shapes])
    raw = np.array([(sum(s) / np.prod(s, dtype=np.float64)) ** erk_power_scale for s in shapes])
    dense = np.zeros(num, bool)
    eps = 0.0
    while True:
        free = ~dense
        if not free.any():
            break
        # Kept weights of the free layers: what the budget leaves after the dense ones.
        rhs = (1.0 - target) * sizes.sum() - sizes[dense].sum()
        eps = rhs / np.sum(raw[free] * sizes[free])
        density = eps * raw
        worst = np.max(density[free])
        if worst <= 1.0 + 1e-12:
            break
        dense |= free & (raw == np.max(raw[free]))
    sparsity = np.where(dense, 0.0, 1.0 - eps * raw)
    return np.clip(sparsity, 0.0, 1.0)
