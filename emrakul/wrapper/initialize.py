"""``init`` of the wrapper: the first :class:`~emrakul.wrapper.state.EmrakulState`.

All the checks that need the parameters run here, before anything is traced
(:mod:`emrakul.wrapper.checks`); then every pruned weight starts ALIVE, the controller sees an
observation with zero gradients, and the traced knobs are copied from the settings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emrakul import vitals as vit
from emrakul._tree import PyTree, check_params
from emrakul.surgery import lifecycle
from emrakul.wrapper import checks
from emrakul.wrapper.health import init_health
from emrakul.wrapper.observe import observation
from emrakul.wrapper.settings import WrapSettings
from emrakul.wrapper.state import EmrakulState, Knobs, gate_key


def initial_knobs(settings: WrapSettings, target: np.ndarray) -> Knobs:
    """The traced :class:`Knobs` of a run with per-layer targets ``target``."""
    return Knobs(
        target=jnp.asarray(target, jnp.float32),
        every=jnp.int32(settings.every),
        cooldown=jnp.int32(settings.cooldown),
        anesthesia_threshold=jnp.float32(settings.anesthesia_threshold),
        anesthesia_depth=jnp.float32(settings.anesthesia_depth),
        anesthesia_recovery=jnp.float32(settings.anesthesia_recovery),
        vitals_decay=jnp.float32(settings.vitals_decay),
        lysed=jnp.zeros(np.shape(target), jnp.float32),
        kept=jnp.ones(np.shape(target), jnp.float32),
    )


def init_state(settings: WrapSettings, params: PyTree) -> EmrakulState:
    """The wrapper's ``init``: validates ``params`` against ``settings`` and builds the state.

    Args:
      settings: the static settings.
      params: the dense parameters.

    Returns:
      The first :class:`EmrakulState` (step 0, every pruned weight ALIVE).

    Raises:
      TypeError / ValueError: a parameter tree Emrakul does not support, a filter that selects
        no leaf or a leaf it cannot prune, a structure that is invalid or does not fit its leaf,
        or a budget the distribution rejects; every message names the leaf by its path.
    """
    check_params(params)
    mask_tree = checks.pruned_masks(params, settings.filter)
    checks.leaf_structures(params, mask_tree, settings.structure)
    target = checks.layer_targets(params, mask_tree, settings.sparsity, settings.distribution)
    life = lifecycle.init(mask_tree)
    knobs = initial_knobs(settings, target)
    controller = settings.controller
    key = jax.random.PRNGKey(settings.seed)
    step = jnp.int32(0)
    vitals = vit.init(params, settings.vitals_statistics) if controller.needs_vitals else None
    health = init_health()
    obs = observation(
        params,
        jax.tree.map(jnp.zeros_like, params),
        life.state,
        vitals,
        knobs.target,
        step,
        jax.random.fold_in(key, 1),
        health,
        total_steps=settings.total_steps,
        filter=settings.filter,
    )
    ctrl = controller.init(params, obs, jax.random.fold_in(key, 2))
    gate = None
    if controller.gates is not None:
        gate = controller.gates(ctrl, params, gate_key(key, step))
    n = int(np.size(target))
    return EmrakulState(
        inner=settings.inner.init(params),
        life=life,
        vitals=vitals,
        controller=ctrl,
        gate=gate,
        lr_scale=jnp.ones((n,), jnp.float32),
        knobs=knobs,
        step=step,
        key=key,
        last_cut=jnp.zeros((n,), jnp.float32),
        last_grown=jnp.zeros((n,), jnp.float32),
        health=health,
    )
