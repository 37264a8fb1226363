"""Dynamic heuristic controllers: GSNR, DSD, harmonic annealing and breathing (EMA + hysteresis).

These controllers change their minds during training. Pruned weights are *sedated* (except in
DSD): they leave the forward pass but keep learning from the straight-through gradient, so they
can wake up again when their score overtakes an alive weight's.

Each factory returns a :class:`~emrakul.controllers.base.Controller` whose state holds jnp
arrays only (the continuous hyperparameters live there as traced scalars, so they can be
changed, or ``vmap``-ed over, without recompiling), and whose ``decide`` works under ``jit`` and
``vmap`` with a traced step. Schedule *fractions* (``start``, ``end``, ``phases``) are static:
they are compared with the static ``observation.total_steps``. Every layer ends at its entry of
``observation.target``; :func:`emrakul.surgery.operate.operate` realises the decisions.

Each controller lives in its own module; this one gathers the family:

* :func:`gsnr`: :mod:`emrakul.controllers.signal_to_noise` (Siems et al. 2021);
* :func:`dsd`: :mod:`emrakul.controllers.dense_sparse_dense` (Han et al. 2017);
* :func:`harmonic`: :mod:`emrakul.controllers.harmonic_annealing`;
* :func:`breathing`: :mod:`emrakul.controllers.breathing_hysteresis`.
"""

# Import order is registration order, the order of ``controllers.NAMES``.
# isort: off
from emrakul.controllers.signal_to_noise import GsnrState, gsnr
from emrakul.controllers.dense_sparse_dense import dsd
from emrakul.controllers.harmonic_annealing import HarmonicState, harmonic, harmonic_sparsity
from emrakul.controllers.breathing_hysteresis import BreathingState, breathing

# isort: on

__all__ = [
    "BreathingState",
    "GsnrState",
    "HarmonicState",
    "breathing",
    "dsd",
    "gsnr",
    "harmonic",
    "harmonic_sparsity",
]
