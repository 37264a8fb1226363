"""The :class:`~emrakul.controllers.base.Observation` a controller sees at a surgery.

One function builds every observation, in the wrapper and in the meta-training environments,
so that a learned policy sees the same thing in training and when it is deployed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emrakul import vitals as vit
from emrakul._tree import Filter, PyTree
from emrakul.controllers.base import Observation
from emrakul.wrapper.health import Health, health_vector


def observation(
    params: PyTree,
    grads: PyTree,
    life_state: PyTree,
    vitals: Any,
    target: jax.Array,
    step: jax.Array,
    key: jax.Array,
    health: Health,
    *,
    total_steps: int,
    activations: Any = None,
    filter: Filter | None = None,
    interval: Any = None,
) -> Observation:
    """The :class:`~emrakul.controllers.base.Observation` a controller sees at a surgery.

    The wrapper builds every observation with it, and so do the meta-training rollouts
    (:mod:`emrakul.lab.meta.plan_rollout`), so that a policy sees the same thing in training and
    when deployed.

    Args:
      params, grads: the dense weights and the gradient of the last step.
      life_state: the lifecycle state tree.
      vitals: the vital signs (or ``None``).
      target: the per-layer target sparsity.
      step: the host step.
      key: this decision's PRNG key.
      health: the :class:`Health` tracker.
      total_steps: host steps of the whole run.
      activations: ``None``, the dict of :func:`emrakul.vitals.activation_stats`, or a tree
        from :func:`emrakul.vitals.activation_tree`.
      filter: the pruning filter (to map a dict of activation statistics onto kernels).
      interval: the host steps between surgeries (``knobs.every``), or ``None``.
    """
    sizes = tuple(int(np.size(s)) for s in jax.tree.leaves(life_state) if jnp.ndim(s) > 0)
    if isinstance(activations, dict):
        activations = vit.activation_tree(params, activations, filter)
    return Observation(
        step=step,
        total_steps=int(total_steps),
        params=params,
        grads=grads,
        state=life_state,
        vitals=vitals,
        layer_size=sizes,
        target=target,
        key=key,
        activations=activations,
        health=health_vector(health),
        interval=None if interval is None else jnp.asarray(interval, jnp.int32),
    )


def state_observation(
    params: PyTree,
    state: Any,
    *,
    total_steps: int,
    health: Health | None = None,
    activations: Any = None,
) -> Observation:
    """The observation of a host from its wrapper state, as meta-training builds it between
    phases (:mod:`emrakul.lab.meta.plan_rollout`).

    The gradient is the vital signs' gradient mean and the key the state's own key.

    Args:
      params: the host's dense weights.
      state: the host's :class:`EmrakulState`.
      total_steps: host steps of the whole run.
      health: overrides ``state.health`` (e.g. with a fresh validation accuracy).
      activations: as for :func:`observation`.
    """
    return observation(
        params,
        vit.grad_mean(state.vitals),
        state.life.state,
        state.vitals,
        state.knobs.target,
        state.step,
        state.key,
        state.health if health is None else health,
        total_steps=total_steps,
        activations=activations,
        interval=state.knobs.every,
    )
