"""``update`` of the wrapper: one host step.

In order: fold this step's validation accuracy into the health tracker (the surgery sees it);
run the surgery of the step (:mod:`emrakul.wrapper.surgery_step`); let gate controllers learn
and update the vital signs; route the gradients through the lifecycle and the gates and run
the inner optimizer on the post-surgery params; finish the updates (lysed frozen,
anesthesia); then advance the step, the gates, the anesthesia recovery and the loss EMAs.
"""

from __future__ import annotations

from typing import Any

import jax

from emrakul import vitals as vit
from emrakul._tree import PyTree, check_same_structure
from emrakul.surgery import anesthesia, lifecycle
from emrakul.wrapper.health import track_health
from emrakul.wrapper.routing import finish_updates, route_gradients
from emrakul.wrapper.settings import WrapSettings
from emrakul.wrapper.state import EmrakulState, gate_key
from emrakul.wrapper.surgery_step import scheduled_surgery


def observe_step(
    settings: WrapSettings, state: EmrakulState, params: PyTree, grads: PyTree
) -> tuple[Any, Any]:
    """The controller's gate learning and the vital signs of this step (updated on every
    ``settings.vitals_every``-th step only: steps ``k - 1, 2k - 1, ...``).

    Returns:
      ``(controller_state, vitals)`` after this step's gradient (each unchanged when the
      controller has no ``learn`` or needs no vital signs).
    """
    controller = settings.controller
    ctrl = state.controller
    if controller.learn is not None:
        ctrl = controller.learn(ctrl, params, grads, gate_key(state.key, state.step), state.step)
    vitals = state.vitals
    if vitals is not None:
        alive = lifecycle.alive_mask(state.life.state)
        table = settings.vitals_statistics

        def fold(v: vit.VitalsState) -> vit.VitalsState:
            return vit.update(v, params, grads, alive, state.knobs.vitals_decay, statistics=table)

        k = settings.vitals_every
        if k == 1:
            vitals = fold(vitals)
        else:  # the last step before each multiple of k, so a surgery sees fresh statistics
            vitals = jax.lax.cond((state.step + 1) % k == 0, fold, lambda v: v, vitals)
    return ctrl, vitals


def advance(
    settings: WrapSettings,
    state: EmrakulState,
    params: PyTree,
    inner_state: Any,
    ctrl: Any,
    vitals: Any,
    value: Any,
) -> EmrakulState:
    """The state after this step: the next step's gates, anesthesia recovery, loss EMAs."""
    step = state.step + 1
    gate = state.gate
    if settings.controller.gates is not None:
        gate = settings.controller.gates(ctrl, params, gate_key(state.key, step))
    return state._replace(
        inner=inner_state,
        vitals=vitals,
        controller=ctrl,
        gate=gate,
        lr_scale=anesthesia.recover(state.lr_scale, state.knobs.anesthesia_recovery),
        step=step,
        health=track_health(state.health, value, None),
    )


def update_state(
    settings: WrapSettings,
    grads: PyTree,
    state: EmrakulState,
    params: PyTree | None = None,
    *,
    surgery: bool | None = None,
    value: Any = None,
    val_accuracy: Any = None,
    activations: Any = None,
    **extra: Any,
) -> tuple[PyTree, EmrakulState]:
    """The wrapper's ``update`` (see :func:`emrakul.wrap` for the extra keywords).

    Args:
      settings: the static settings.
      grads: the straight-through gradient of this step.
      state: the wrapper state.
      params: the dense params (required).
      surgery: ``None`` automatic, ``True`` forced, ``False`` skipped (static).
      value: this step's loss, folded into the health EMAs after the surgery.
      val_accuracy: the latest validation accuracy, seen by this step's surgery.
      activations: per-unit activation statistics for this step's surgery.
      **extra: other extra arguments, ignored as optax does.

    Returns:
      ``(updates, new_state)``.

    Raises:
      ValueError: missing params, or grads whose structure differs from the params'.
    """
    del extra
    if params is None:
        raise ValueError("emrakul.wrap's update needs params (tx.update(grads, state, params))")
    check_same_structure(params, grads, "params", "grads")
    state = state._replace(health=track_health(state.health, None, val_accuracy))
    state, new_params = scheduled_surgery(settings, state, params, grads, surgery, activations)
    ctrl, vitals = observe_step(settings, state, params, grads)
    g_theta = route_gradients(grads, state.life.state, state.gate)
    inner_updates, inner_state = settings.inner.update(g_theta, state.inner, new_params)
    updates = finish_updates(inner_updates, state.life.state, params, new_params, state.lr_scale)
    return updates, advance(settings, state, params, inner_state, ctrl, vitals, value)
