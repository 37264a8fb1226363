"""Gate controllers: learned stochastic gates that decide the mask, then hand over to it.

* :func:`l0`: per-weight hard-concrete gates with an expected-L0 penalty (Louizos, Welling &
  Kingma 2018), in :mod:`emrakul.controllers.hard_concrete_gates`;
* :func:`variational_units`: Bernoulli gates on output units with a cost-weighted penalty (in
  the spirit of OFEXiNet, Guenter & Sideris 2025), in :mod:`emrakul.controllers.unit_gates`.

How the gates are drawn, trained from the straight-through gradient and finally replaced by a
mask is described in :mod:`emrakul.controllers.gate_training`.
"""

from emrakul.controllers.hard_concrete_gates import L0State, l0
from emrakul.controllers.unit_gates import UnitGateState, variational_units

__all__ = ["L0State", "UnitGateState", "l0", "variational_units"]
