"""The Nervous System: per-parameter vital signs of a training network.

``init`` / ``update`` keep running gradient statistics (an optax-style pair of pure functions)
over a table of named entries (:data:`STATISTICS`; a new vital sign is one
:class:`Statistic`); the derived signals (GSNR, Fisher, saliency, magnitude, Hessian diagonal,
activation and dormancy statistics) are computed from them or from a batch;
:mod:`emrakul.vitals.regions` summarises any of them per region into the fixed-shape matrix the
agent observes.
"""

from emrakul.vitals import regions, statistics
from emrakul.vitals.activations import ActivationStats, activation_stats, activation_tree
from emrakul.vitals.hessian import hessian_diag
from emrakul.vitals.signals import corrected, fisher, grad_mean, gsnr, magnitude, saliency
from emrakul.vitals.state import VitalsState, init, update
from emrakul.vitals.statistics import COMPACT_STATISTICS, STATISTICS, LeafContext, Statistic

__all__ = [
    "COMPACT_STATISTICS",
    "STATISTICS",
    "ActivationStats",
    "LeafContext",
    "Statistic",
    "VitalsState",
    "activation_stats",
    "activation_tree",
    "corrected",
    "fisher",
    "grad_mean",
    "gsnr",
    "hessian_diag",
    "init",
    "magnitude",
    "regions",
    "saliency",
    "statistics",
    "update",
]
