"""Emrakul: dynamic, reinforcement-learning driven pruning of JAX networks while they train."""

from emrakul import controllers, filters, masks, surgery, vitals
from emrakul.wrapper import EmrakulState, layer_sparsity, masked, sparsity, wrap

__version__ = "0.1.0"

__all__ = [
    "EmrakulState",
    "controllers",
    "filters",
    "layer_sparsity",
    "masked",
    "masks",
    "sparsity",
    "surgery",
    "vitals",
    "wrap",
]
