"""Controllers: anything that decides masks from vital signs, behind one interface.

``make(name, **kwargs)`` builds one by name (the names configs and tables use); ``NAMES`` is a
live, read-only view of the registered names (``names()`` returns them as a tuple). A new
controller is one file: a factory decorated with ``@register("name")``
(:mod:`emrakul.controllers.registry`). See :mod:`emrakul.controllers.base` for the interface.

The built-in controllers register themselves when their modules are imported here, in the
order of ``NAMES``: the classic heuristics (:mod:`~emrakul.controllers.basic`), the dynamic
ones (:mod:`~emrakul.controllers.dynamic`), the gates (:mod:`~emrakul.controllers.gates`) and
the plasticity remedies (continual backprop, ReDo, Shrink & Perturb, Fisher-guided
selective forgetting: dense controllers whose decisions rewrite weights) and the learned
Magistrate (:mod:`~emrakul.controllers.magistrate`).
"""

from emrakul.controllers.base import Controller, Decision, Observation
from emrakul.controllers.basic import dense, gmp, one_shot, rigl, set_, snip
from emrakul.controllers.dynamic import breathing, dsd, gsnr, harmonic
from emrakul.controllers.gates import l0, variational_units

# The import order is the registration order, i.e. the order of NAMES.
# isort: off
from emrakul.controllers.continual_backprop import continual_backprop
from emrakul.controllers.redo import redo
from emrakul.controllers.shrink_perturb import shrink_perturb
from emrakul.controllers.selective_forgetting import selective_forgetting
from emrakul.controllers.planned import planned
from emrakul.controllers.magistrate import magistrate

# isort: on
from emrakul.controllers.registry import (
    NAMES,
    factory,
    known,
    make,
    names,
    register,
    unregister,
)
from emrakul.controllers.with_remedy import with_remedy

__all__ = [
    "NAMES",
    "Controller",
    "Decision",
    "Observation",
    "breathing",
    "continual_backprop",
    "dense",
    "dsd",
    "factory",
    "gmp",
    "gsnr",
    "harmonic",
    "known",
    "l0",
    "magistrate",
    "make",
    "names",
    "one_shot",
    "planned",
    "redo",
    "register",
    "rigl",
    "selective_forgetting",
    "set_",
    "shrink_perturb",
    "snip",
    "unregister",
    "variational_units",
    "with_remedy",
]
