"""Controllers: anything that decides masks from vital signs, behind one interface.

``make(name, **kwargs)`` builds one by name (the names configs and tables use); ``NAMES``
lists them. See :mod:`emrakul.controllers.base` for the interface.
"""

from emrakul.controllers.base import Controller, Decision, Observation
from emrakul.controllers.basic import dense, gmp, one_shot, rigl, set_, snip
from emrakul.controllers.dynamic import breathing, dsd, gsnr, harmonic
from emrakul.controllers.gates import l0, variational_units
from emrakul.controllers.magistrate import magistrate

_FACTORIES = {
    "dense": dense,
    "one_shot": one_shot,
    "snip": snip,
    "gmp": gmp,
    "set": set_,
    "rigl": rigl,
    "gsnr": gsnr,
    "dsd": dsd,
    "harmonic": harmonic,
    "breathing": breathing,
    "l0": l0,
    "variational": variational_units,
    "magistrate": magistrate,
}
NAMES = tuple(_FACTORIES)


def make(name: str, **kwargs) -> Controller:
    """The controller called ``name`` (one of ``NAMES``) with keyword arguments ``kwargs``.

    Raises:
      ValueError: unknown name.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown controller '{name}'; choose one of {NAMES}")
    return _FACTORIES[name](**kwargs)


__all__ = [
    "NAMES",
    "Controller",
    "Decision",
    "Observation",
    "breathing",
    "dense",
    "dsd",
    "gmp",
    "gsnr",
    "harmonic",
    "l0",
    "magistrate",
    "make",
    "one_shot",
    "rigl",
    "set_",
    "snip",
    "variational_units",
]
