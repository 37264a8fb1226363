"""A surgery decision from a :class:`~emrakul.controllers.plan_space.SurgeryPlan`.

For each pruned layer the score of a weight is

    ``S = base * (1 + hysteresis * [alive]) * exp(mix . features + bias + T * gumbel)``,

with ``base`` the neutral heuristic's own score (the EMA of |theta * g| for breathing, |theta|
for GMP), ``features`` the logs of :data:`~emrakul.controllers.plan_space.MIX_FEATURES` and
``bias`` the region's rank bias; the product form makes the neutral plan (every deviation 0)
compute the heuristic's score bit for bit. The regrowth score is ``S * |g|^regrow``. The layer's
sparsity follows ``s_t = s_l * (1 - (1 - p)^shape)`` over the (shifted) window, with ``s_l`` the
final sparsity of the allocation (:mod:`emrakul.surgery.allocation`: exact counts, fixed global
total); while the schedule runs (and after it, with ``PlanSpace.churn_after_end``), ``churn`` of
the alive weights are offered for swapping. Weights leave to SEDATED; once the schedule has
ended, weights still sedated are lysed (unless ``PlanSpace.lyse_at_end`` is off).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emrakul import vitals as vit
from emrakul._tree import PyTree
from emrakul.controllers.base import Decision, Observation, make_decision, state_scores
from emrakul.controllers.plan_space import PlanKnobs, PlanSpace, SurgeryPlan
from emrakul.masks.structures import Units
from emrakul.masks.tree import is_pruned
from emrakul.surgery import allocation
from emrakul.surgery.lifecycle import ALIVE
from emrakul.vitals import regions as rg

_TINY = 1e-30
_MAX_LOG = 30.0  # the exponent of the score's deviation factor is clipped to +-_MAX_LOG


class PlanState(NamedTuple):
    """What a plan-following controller carries between surgeries.

    Attributes:
      importance: the EMA of |theta * g| per weight (arrays on pruned leaves, scalar 0 markers
        elsewhere), updated at every surgery with the plan's per-layer decay.
    """

    importance: PyTree


def region_layout(obs: Observation) -> rg.RegionLayout:
    """The ``Units(-1)`` regions (output units / channels) of the pruned leaves."""
    return rg.layout(obs.state, Units(-1), filter=lambda path, s: is_pruned(s))


def init_state(obs: Observation) -> PlanState:
    """Zero saliency EMAs."""
    return PlanState(state_scores(obs, lambda s: jnp.zeros(jnp.shape(s), jnp.float32)))


def _window(step, total: int, space: PlanSpace, k: PlanKnobs, interval=None):
    """``(progress, running, started, ended)`` of the shifted window; without shifts the
    boundaries are the Python constants of :mod:`emrakul.controllers.schedules`, bit for bit.
    The last surgery of the run (``step + interval >= total``) always ends the window, so every
    run ends at its target even when the window ends after it."""
    t = jnp.asarray(step, jnp.float32)
    c0 = space.start * total
    c1 = max(space.end * total, c0 + 1)
    t0 = (space.start + k.start) * total
    t1 = (space.end + k.end) * total
    t1_p = jnp.maximum(t1, t0 + 1)
    neutral = (k.start == 0) & (k.end == 0)
    p = jnp.where(neutral, (t - c0) / (c1 - c0), (t - t0) / (t1_p - t0))
    t0 = jnp.where(k.start == 0, jnp.float32(c0), t0)
    t1 = jnp.where(k.end == 0, jnp.float32(space.end * total), t1)
    last = jnp.zeros((), bool) if interval is None else step + interval >= total
    p = jnp.where(last, 1.0, jnp.clip(p, 0.0, 1.0))
    return p, (t >= t0) & (t < t1) & ~last, (t >= t0) | last, (t >= t1) | last


def layer_sparsity(obs: Observation, space: PlanSpace, k: PlanKnobs) -> tuple:
    """float32 ``[L]`` sparsity at ``obs.step``, and the flags ``(running, started, ended)``."""
    sizes = obs.layer_size
    target = jnp.asarray(obs.target, jnp.float32)
    base = allocation.base_keep(target, sizes)
    keep = allocation.reallocate(base, k.alloc[: len(sizes)], sizes)
    final = allocation.sparsity_of(keep, base, target, sizes)
    p, running, started, ended = _window(obs.step, obs.total_steps, space, k, obs.interval)
    ramp = jnp.where(k.shape == 3.0, 1.0 - (1.0 - p) ** 3, 1.0 - (1.0 - p) ** k.shape)
    return final * ramp, running, started, ended


def _mix_logs(obs: Observation, importance: PyTree) -> list[list[jax.Array]]:
    """Per pruned leaf, the log features of ``MIX_FEATURES`` (order kept)."""
    gsnr = vit.gsnr(obs.vitals)
    fisher = vit.fisher(obs.vitals)
    out = []
    trees = (obs.state, obs.params, importance, gsnr, fisher)
    for s, w, i, g, f in zip(*(jax.tree.leaves(t) for t in trees), strict=True):
        if is_pruned(s):
            out.append([jnp.log(jnp.abs(w).astype(jnp.float32) + _TINY), jnp.log(i + _TINY),
                        jnp.log(g + _TINY), jnp.log(f + _TINY)])  # fmt: skip
    return out


def _gumbel_like(key: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
    keys = jax.random.split(key, max(len(leaves), 1))
    return [jax.random.gumbel(kk, jnp.shape(x)) for kk, x in zip(keys, leaves, strict=False)]


def _scores(obs, space: PlanSpace, k: PlanKnobs, importance: PyTree, bias_tree: PyTree):
    """The drop and grow score trees of the plan (module docstring)."""
    logs = _mix_logs(obs, importance)
    pruned = [s for s in jax.tree.leaves(obs.state) if is_pruned(s)]
    noise = _gumbel_like(obs.key, pruned)
    trees = (obs.state, obs.params, obs.grads, importance, bias_tree)
    flat = zip(*(jax.tree.leaves(t) for t in trees), strict=True)
    drop, grow, j = [], [], 0
    for s, w, g, i, b in flat:
        if not is_pruned(s):
            drop.append(jnp.float32(0.0))
            grow.append(jnp.float32(0.0))
            continue
        base = i if space.base == "breathing" else jnp.abs(w).astype(jnp.float32)
        dev = sum(k.mix[j, f] * logs[j][f] for f in range(len(logs[j]))) + b
        dev = dev + jnp.where(k.temperature > 0, k.temperature * noise[j], 0.0)
        dev = jnp.where(jnp.isnan(dev), 0.0, dev)
        factor = jnp.exp(jnp.clip(dev, -_MAX_LOG, _MAX_LOG))
        score = base * jnp.where(s == ALIVE, 1.0 + k.hysteresis[j], 1.0) * factor
        log_g = jnp.log(jnp.abs(g).astype(jnp.float32) + _TINY)
        drop.append(score)
        grow.append(score * jnp.exp(jnp.clip(k.regrow[j] * log_g, -_MAX_LOG, _MAX_LOG)))
        j += 1
    treedef = jax.tree.structure(obs.state)
    return jax.tree.unflatten(treedef, drop), jax.tree.unflatten(treedef, grow)


def _update_importance(obs: Observation, k: PlanKnobs, importance: PyTree) -> PyTree:
    """``I <- d_l * I + (1 - d_l) * |theta * g|`` with each layer's decay ``d_l``."""
    out, j = [], 0
    trees = (obs.state, importance, obs.params, obs.grads)
    for s, i, w, g in zip(*(jax.tree.leaves(t) for t in trees), strict=True):
        if is_pruned(s):
            d = k.decay[j]
            out.append(d * i + (1.0 - d) * jnp.abs(w * g).astype(jnp.float32))
            j += 1
        else:
            out.append(i)
    return jax.tree.unflatten(jax.tree.structure(obs.state), out)


def plan_decision(
    obs: Observation, plan: SurgeryPlan, state: PlanState, space: PlanSpace
) -> tuple[Decision, PlanState]:
    """The surgery decision of ``plan`` at ``obs`` and the new state (module docstring).

    Args:
      obs: the observation (vital signs required: the mix reads GSNR and Fisher).
      plan: a raw plan with at least as many layers and regions as the host (padding ignored).
      state: the :class:`PlanState`.
      space: the static :class:`PlanSpace`.

    Raises:
      ValueError: no vital signs, or a plan with fewer layers or regions than the host.
    """
    if obs.vitals is None:
        raise ValueError("a surgery plan needs vital signs (controller.needs_vitals=True)")
    layout = region_layout(obs)
    num = len(obs.layer_size)
    if plan.alloc.shape[0] < num or plan.bias.shape[0] < layout.num_regions:
        raise ValueError(
            f"the plan covers {plan.alloc.shape[0]} layers / {plan.bias.shape[0]} regions; the "
            f"host has {num} / {layout.num_regions}"
        )
    k = space.knobs(plan)
    importance = _update_importance(obs, k, state.importance)
    bias_tree = rg.broadcast(k.bias[: layout.num_regions], layout, fill=0.0)
    drop, grow = _scores(obs, space, k, importance, bias_tree)
    sparsity, running, started, ended = layer_sparsity(obs, space, k)
    swapping = (running | ended) if space.churn_after_end else running
    churn = jnp.where(swapping, k.churn[:num], 0.0)
    decision = make_decision(num, sparsity, churn, drop, grow, started)
    if space.lyse_at_end:
        decision = decision._replace(lyse=jax.tree.map(lambda s: ended & is_pruned(s), obs.state))
    return decision, PlanState(importance)
