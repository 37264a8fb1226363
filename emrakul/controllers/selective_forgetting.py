"""Fisher-guided selective forgetting: the project's remedy for primacy bias.

A network that has settled on early data holds its most rigid weights (the largest empirical
Fisher diagonal, the vital signs' ``E[g^2]``; Kirkpatrick et al. 2017's importance in EWC)
where the first tasks put them. When the Fisher trace saturates (its relative change between
two surgeries falls below ``tolerance``), and at most once per ``gap`` host steps, the
``fraction`` of each layer's weights with the largest Fisher value are re-initialised from the
layer's LeCun-normal initialiser (variance ``1 / fan_in``) with fresh optimizer moments, so that
they can be re-learnt from the current data (a targeted form of Shrink & Perturb, Ash & Adams
2020). It never prunes: it is the dense network's remedy (``needs_vitals``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree
from emrakul.controllers.base import Controller, Observation
from emrakul.controllers.checks import check_positive, check_unit
from emrakul.controllers.registry import register
from emrakul.controllers.unit_reset import hold
from emrakul.masks.tree import is_pruned
from emrakul.surgery.rewrite import Rewrite


class ForgettingState(NamedTuple):
    """``trace``: the Fisher trace at the last surgery; ``last``: the step of the last
    forgetting (``-gap`` before the first)."""

    trace: jax.Array
    last: jax.Array


def _top(score: jax.Array, fraction: float) -> jax.Array:
    """bool mask of the ``round(fraction * n)`` largest entries of ``score``."""
    k = round(fraction * score.size)
    if k == 0:
        return jnp.zeros(score.shape, bool)
    threshold = jax.lax.top_k(score.reshape(-1), k)[0][-1]
    return score >= threshold


def forget(obs: Observation, fire: jax.Array, fraction: float) -> Rewrite:
    """Re-initialises the top-``fraction`` Fisher weights of every pruned leaf where ``fire``."""
    fisher = obs.vitals.grad_sq
    keep, add, reset = [], [], []
    trees = (jax.tree.leaves(obs.params), jax.tree.leaves(fisher), jax.tree.leaves(obs.state))
    for j, (p, f, s) in enumerate(zip(*trees, strict=True)):
        if not is_pruned(s) or jnp.ndim(p) < 2:
            keep.append(jnp.float32(1.0)), add.append(jnp.float32(0.0))
            reset.append(jnp.zeros((), bool))
            continue
        std = np.sqrt(1.0 / np.prod(p.shape[:-1]))
        hit = fire & _top(jnp.asarray(f, jnp.float32), fraction)
        fresh = std * jax.random.normal(jax.random.fold_in(obs.key, j), p.shape, jnp.float32)
        keep.append(jnp.where(hit, 0.0, 1.0)), add.append(jnp.where(hit, fresh, 0.0))
        reset.append(hit)
    treedef = jax.tree.structure(obs.params)
    return Rewrite(*(jax.tree.unflatten(treedef, x) for x in (keep, add, reset)))


@register("selective_forgetting")
def selective_forgetting(
    fraction: float = 0.01, tolerance: float = 0.02, gap: int = 1000
) -> Controller:
    """Fisher-guided selective forgetting (module docstring).

    Args:
      fraction: the share of each layer's weights re-initialised at a forgetting, in [0, 1].
      tolerance: the relative change of the Fisher trace below which it counts as saturated.
      gap: host steps at least between two forgettings (>= 1).

    Returns:
      A dense controller with ``needs_vitals``.

    Raises:
      ValueError: a bad fraction, a negative tolerance or a gap below 1.
    """
    fraction = check_unit("fraction", fraction)
    tolerance = check_positive("tolerance", tolerance, allow_zero=True)
    if int(gap) < 1:
        raise ValueError(f"gap must be >= 1 host step, got {gap}")
    gap = int(gap)

    def init(params: PyTree, observation: Observation | None = None, key=None):
        del params, observation, key
        return ForgettingState(trace=jnp.float32(0.0), last=jnp.int32(0))

    def decide(obs: Observation, state: ForgettingState):
        if obs.vitals is None:
            raise ValueError("selective_forgetting needs vital signs (needs_vitals)")
        pairs = zip(jax.tree.leaves(obs.vitals.grad_sq), jax.tree.leaves(obs.state), strict=True)
        pruned = [jnp.sum(f) for f, s in pairs if is_pruned(s)]
        trace = jnp.sum(jnp.asarray(pruned, jnp.float32))
        change = jnp.abs(trace - state.trace) / jnp.maximum(state.trace, 1e-30)
        fire = (change < tolerance) & (obs.step - state.last >= gap) & (state.trace > 0)
        last = jnp.where(fire, jnp.asarray(obs.step, jnp.int32), state.last)
        return hold(obs, forget(obs, fire, fraction)), ForgettingState(trace, last)

    return Controller(name="selective_forgetting", init=init, decide=decide, needs_vitals=True)
