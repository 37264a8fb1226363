"""Dense-sparse-dense training, ending sparse: prune, regrow everything, prune again.

Han et al. 2017, "DSD: Dense-Sparse-Dense Training for Deep Neural Networks". The phases are
static fractions of training; the controller is stateless.
"""

from __future__ import annotations

import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.controllers import schedules
from emrakul.controllers.base import Controller, Decision, Observation, make_decision, state_scores
from emrakul.controllers.checks import check_unit, pruned_count
from emrakul.controllers.registry import register
from emrakul.surgery.lifecycle import LYSED


@register("dsd")
def dsd(phases: tuple[float, float, float] = (0.2, 0.45, 0.6)) -> Controller:
    """Dense-sparse-dense training (Han et al. 2017, "DSD: Dense-Sparse-Dense Training for Deep
    Neural Networks"), ending sparse.

    With ``phases = (a, b, c)`` and ``T`` the run length:

    * ``step < a T``: dense.
    * ``a T <= step < b T``: one-shot magnitude pruning to ``observation.target``; the pruned
      weights are LYSED (zeroed) and the sparse network is retrained.
    * ``b T <= step < c T``: re-dense: sparsity 0, every lysed weight is regrown and restarts
      from zero (``regrow_lysed=True``), as in DSD's final dense phase.
    * ``step >= c T``: magnitude-pruned to the target again until the end, so the run ends at
      the target sparsity (DSD proper ends dense; this is DSDS).

    Scores are ``|theta|`` (regrown weights all score 0 and are all regrown anyway). The
    controller is stateless (its state is ``()``).

    Args:
      phases: static, strictly increasing fractions of training in (0, 1).

    Returns:
      A controller with ``drop_to=LYSED`` and ``regrow_lysed=True``.

    Raises:
      ValueError: ``phases`` is not three strictly increasing numbers in (0, 1).
    """
    phases = tuple(phases)
    if len(phases) != 3:
        raise ValueError(f"phases must hold three fractions (a, b, c), got {phases!r}")
    a, b, c = (
        check_unit(f"phases[{i}]", p, open_low=True, open_high=True) for i, p in enumerate(phases)
    )
    if not a < b < c:
        raise ValueError(f"phases must be strictly increasing, got {phases!r}")

    def init(params: PyTree, observation: Observation | None = None, key=None) -> tuple:
        del params, observation, key
        return ()

    def decide(obs: Observation, state: tuple) -> tuple[Decision, tuple]:
        num = pruned_count(obs, "dsd")
        T = obs.total_steps
        t = jnp.asarray(obs.step, jnp.float32)
        sparse = schedules.between(obs.step, T, a, b) | (t >= c * T)
        sparsity = jnp.where(sparse, jnp.asarray(obs.target, jnp.float32), 0.0)
        mag = state_scores(obs, lambda s, w: jnp.abs(w), obs.params)
        return make_decision(num, sparsity, 0.0, mag, mag, True), state

    return Controller(name="dsd", init=init, decide=decide, drop_to=LYSED, regrow_lysed=True)
