"""Emrakul: dynamic, reinforcement-learning driven pruning of JAX networks while they train."""

from emrakul import masks, vitals

__version__ = "0.1.0"

__all__ = ["masks", "vitals"]
