"""Surgery: the lifecycle of weights (alive / sedated / lysed), budgets, anesthesia, and
``operate``, which realises a controller's decision as masks and lifecycle changes."""

from emrakul.surgery.anesthesia import anesthetize, recover
from emrakul.surgery.budgets import layer_sparsities
from emrakul.surgery.lifecycle import ALIVE, LYSED, SEDATED, Lifecycle
from emrakul.surgery.operate import SurgeryResult, operate

__all__ = [
    "ALIVE",
    "LYSED",
    "SEDATED",
    "Lifecycle",
    "SurgeryResult",
    "anesthetize",
    "layer_sparsities",
    "operate",
    "recover",
]
