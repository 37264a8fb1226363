"""The surgery inside ``update``: observe, decide, operate, anesthetise, reset moments.

Three modes, chosen by the static ``surgery`` argument of ``update``: automatic (``None``: a
``lax.cond`` on ``step % every == 0``), forced (``True``) and skipped (``False``). A caller that
drives the schedule itself forces or skips, so that nothing is decided by a ``lax.cond`` on a
batched step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from emrakul._tree import PyTree
from emrakul.surgery import anesthesia
from emrakul.surgery.operate import operate
from emrakul.surgery.rewrite import apply_rewrite, merge_resets
from emrakul.wrapper.checks import leaf_structures
from emrakul.wrapper.observe import observation
from emrakul.wrapper.settings import WrapSettings
from emrakul.wrapper.state import EmrakulState, Knobs, decision_key


def reset_moments(inner: optax.GradientTransformation, inner_state: Any, reset: PyTree) -> Any:
    """Zeroes the inner optimizer's per-parameter state where ``reset`` is True.

    Weights that were just lysed, or regrown from LYSED, restart with fresh moments (RigL's
    zero initialisation of regrown connections, Evci et al. 2020). Leaves of ``reset`` that are
    scalar markers (unpruned leaves) leave the state alone.
    """
    return optax.tree_utils.tree_map_params(
        inner,
        lambda v, r: jnp.where(r, jnp.zeros((), v.dtype), v) if jnp.ndim(r) else v,
        inner_state,
        reset,
    )


def on_compact_layers(decision: Any, knobs: Knobs) -> Any:
    """``decision`` with each layer's sparsity (of the original layer) turned into the compact
    layer's: ``(s - lysed) / kept`` (the identity before any lysis; see :class:`Knobs`)."""
    kept = jnp.where(knobs.kept > 0, knobs.kept, 1.0)  # a layer lysed whole prunes nothing more
    s = (decision.sparsity - knobs.lysed) / kept
    return decision._replace(sparsity=jnp.clip(s, 0.0, 1.0).astype(decision.sparsity.dtype))


def surgery_step(
    settings: WrapSettings,
    state: EmrakulState,
    params: PyTree,
    grads: PyTree,
    activations: Any = None,
) -> tuple[EmrakulState, PyTree]:
    """One surgery at ``state.step``: the controller decides, :func:`operate` applies it.

    Args:
      settings: the static settings.
      state: the wrapper state before the surgery.
      params: the dense weights.
      grads: this step's straight-through gradient.
      activations: per-unit activation statistics for the observation, or ``None``.

    Returns:
      The state after the surgery (lifecycle, controller state, anesthesia, reset moments, last
      cut and growth) and the params after it (newly lysed weights zeroed, the decision's
      rewrite applied).
    """
    controller = settings.controller
    structures = leaf_structures(params, state.life.state, settings.structure, check_fit=False)
    obs = observation(
        params,
        grads,
        state.life.state,
        state.vitals,
        state.knobs.target,
        state.step,
        decision_key(state.key, state.step),
        state.health,
        total_steps=settings.total_steps,
        activations=activations,
        filter=settings.filter,
        interval=state.knobs.every,
    )
    decision, ctrl = controller.decide(obs, state.controller)
    decision = on_compact_layers(decision, state.knobs)
    res = operate(
        state.life,
        decision,
        params,
        state.step,
        structures=structures,
        drop_to=controller.drop_to,
        regrow_lysed=controller.regrow_lysed,
        cooldown=state.knobs.cooldown,
    )
    new_params, reset = res.params, res.reset
    rewrite = getattr(decision, "rewrite", None)
    if rewrite is not None:  # a remedy rewrites weights (after the mask changes)
        new_params = apply_rewrite(new_params, res.life.state, rewrite)
        reset = merge_resets(reset, rewrite.reset)
    knobs = state.knobs
    lr_scale = anesthesia.anesthetize(
        state.lr_scale, res.cut, knobs.anesthesia_threshold, knobs.anesthesia_depth
    )
    state = state._replace(
        inner=reset_moments(settings.inner, state.inner, reset),
        life=res.life,
        controller=ctrl,
        lr_scale=lr_scale,
        last_cut=res.cut,
        last_grown=res.grown,
    )
    return state, new_params


def scheduled_surgery(
    settings: WrapSettings,
    state: EmrakulState,
    params: PyTree,
    grads: PyTree,
    mode: bool | None,
    activations: Any = None,
) -> tuple[EmrakulState, PyTree]:
    """The surgery of this step in the given mode: ``None`` automatic, ``True`` forced,
    ``False`` skipped (then state and params are returned unchanged).

    In automatic mode the surgery runs when ``step % knobs.every == 0`` (so also at the first
    call), under a ``lax.cond`` so that a traced ``every`` does not recompile.
    """
    if mode is True:
        return surgery_step(settings, state, params, grads, activations)
    if mode is None:
        due = state.step % state.knobs.every == 0
        return jax.lax.cond(
            due,
            lambda s: surgery_step(settings, s, params, grads, activations),
            lambda s: (s, params),
            state,
        )
    return state, params
