"""Regions: per-parameter signals summarised into the fixed-shape matrix the agent observes.

A *region* is a group of weights that is observed and acted on together. Its kind reuses the
sparsity structures of :mod:`emrakul.masks.structures`:

* ``Unstructured()`` - the whole leaf (layer) is one region;
* ``Units(axis)`` - one region per slice along ``axis`` (an output unit of a Dense kernel
  ``[in, out]`` or an output channel of a Conv kernel ``[*window, in, out]`` for ``axis=-1``);
* ``NM(n, m, axis)`` - one region per block of ``m`` consecutive entries along ``axis``
  (``n`` is ignored here). Blocks are numbered in C order of the array with ``axis`` moved last.

:func:`layout` builds a static :class:`RegionLayout` from shapes alone (it is hashable and may be
closed over or passed to ``jax.jit`` as an argument: it is a pytree without leaves).
:func:`summarize` reduces named signal trees (``{'magnitude': ..., 'gsnr': ..., 'mask': ...}``)
per region into :class:`Regions`, whose ``features`` are ``float32 [num_regions, num_features]``
with static shapes for a given param tree, so the agent compiles once. :func:`broadcast` maps a
per-region value (a decision, a score) back onto every weight; :func:`layer_summary` averages the
region features per layer.

The package is split by direction: :mod:`~emrakul.vitals.regions.geometry` (the layout),
:mod:`~emrakul.vitals.regions.reduction` (weights to regions) and
:mod:`~emrakul.vitals.regions.expansion` (regions to weights).
"""

from emrakul.vitals.regions.expansion import broadcast
from emrakul.vitals.regions.geometry import RegionLayout, layout, num_regions, region_ids
from emrakul.vitals.regions.reduction import REDUCTIONS, Regions, layer_summary, summarize

__all__ = [
    "REDUCTIONS",
    "RegionLayout",
    "Regions",
    "broadcast",
    "layer_summary",
    "layout",
    "num_regions",
    "region_ids",
    "summarize",
]
