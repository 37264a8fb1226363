"""What the Magistrate observes: per-region vital signs and a few global features.

Per output unit of every pruned kernel (``Units`` regions, :mod:`emrakul.vitals.regions`), the
mean of log-scale signals: log-magnitude, log-|gradient|, log1p-GSNR, log-Fisher, sign-flip
rate, log1p dormancy age, the alive and sedated fractions, the unit's ReDo activation score
(Sokar et al. 2023; 0 when the loop measured none), plus the region's log-size and its
layer's relative depth. Every feature is z-scored over the host's valid regions, so the same
policy transfers between hosts of different sizes (DESIGN.md: keep observations normalised).
Rows are padded to ``r_max``; layers to ``l_max``.

Globals come from the observation alone (so a deployed policy sees what the training policy
saw): progress through training, current and target sparsity, the mean log1p-GSNR and mean
flip rate of alive weights, the log Fisher trace, and the training health the wrapper tracks
(``Observation.health``): log training loss, its relative slope (clipped to [-1, 1]) and the
last validation accuracy (zeros when not tracked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emrakul import vitals as vit
from emrakul.agent.networks import AgentObs
from emrakul.controllers.base import Observation
from emrakul.surgery.lifecycle import ALIVE, SEDATED
from emrakul.vitals import regions as rg

SIGNALS = ("logmag", "loggrad", "gsnr", "fisher", "flip", "age", "alive", "sedated", "dormant")
FEATURE_NAMES = (*sorted(SIGNALS), "log_size", "depth")
"""The columns of ``AgentObs.regions`` (signals in sorted order, as ``regions.summarize``)."""
NUM_FEATURES = len(FEATURE_NAMES)
NUM_GLOBALS = 9


def _zscore(x: jax.Array, valid: jax.Array) -> jax.Array:
    w = valid[:, None].astype(x.dtype)
    n = jnp.maximum(w.sum(0), 1.0)
    mean = (x * w).sum(0) / n
    var = (((x - mean) * w) ** 2).sum(0) / n
    return jnp.where(valid[:, None], (x - mean) / jnp.sqrt(var + 1e-6), 0.0)


def observe(
    obs: Observation,
    layout: rg.RegionLayout,
    r_max: int,
    l_max: int,
    drop: tuple[str, ...] = (),
) -> AgentObs:
    """The agent's observation of a host at a surgery time.

    Args:
      obs: the controller :class:`~emrakul.controllers.base.Observation` (vitals required).
      layout: the host's ``Units`` region layout over its pruned kernels.
      r_max: padded region count (>= ``layout.num_regions``).
      l_max: padded layer count (>= ``layout.num_layers``).
      drop: names from ``SIGNALS`` whose region features are zeroed (ablations).

    Returns:
      An :class:`~emrakul.agent.networks.AgentObs`.
    """
    if layout.num_regions > r_max or layout.num_layers > l_max:
        raise ValueError(
            f"host has {layout.num_regions} regions / {layout.num_layers} layers, more than "
            f"r_max={r_max} / l_max={l_max}"
        )
    unknown = set(drop) - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown observation groups {sorted(unknown)}; choose from {SIGNALS}")
    if obs.vitals is None:
        raise ValueError("the Magistrate needs vital signs (controller.needs_vitals)")
    tiny = 1e-12
    state = obs.state
    gsnr = vit.gsnr(obs.vitals)
    fisher = vit.fisher(obs.vitals)
    signals = {
        "logmag": jax.tree.map(lambda w: jnp.log(jnp.abs(w) + tiny), obs.params),
        "loggrad": jax.tree.map(lambda g: jnp.log(jnp.abs(g) + tiny), vit.grad_mean(obs.vitals)),
        "gsnr": jax.tree.map(jnp.log1p, gsnr),
        "fisher": jax.tree.map(lambda f: jnp.log(f + tiny), fisher),
        "flip": obs.vitals.flip_rate,
        "age": jax.tree.map(lambda a: jnp.log1p(a.astype(jnp.float32)), obs.vitals.age),
        "alive": jax.tree.map(
            lambda s, w: jnp.broadcast_to(s == ALIVE, jnp.shape(w)), state, obs.params
        ),
        "sedated": jax.tree.map(
            lambda s, w: jnp.broadcast_to(s == SEDATED, jnp.shape(w)), state, obs.params
        ),
        "dormant": jax.tree.map(
            lambda a, w: jnp.broadcast_to(jnp.asarray(a, jnp.float32), jnp.shape(w)),
            obs.activations
            if obs.activations is not None
            else jax.tree.map(lambda _: jnp.float32(0.0), obs.params),
            obs.params,
        ),
    }
    summary = rg.summarize(signals, layout)
    num = layout.num_regions
    depth = layout.layer_index / max(layout.num_layers - 1, 1)
    extra = jnp.stack(
        [jnp.log(jnp.asarray(layout.region_size, jnp.float32)), jnp.asarray(depth, jnp.float32)],
        axis=1,
    )
    feats = jnp.concatenate([summary.features, extra], axis=1)
    pad = r_max - num
    feats = jnp.pad(feats, ((0, pad), (0, 0)))
    valid = jnp.arange(r_max) < num
    feats = _zscore(feats, valid)
    keep = jnp.asarray(
        [name.split("/")[0] not in drop for name in summary.feature_names] + [True, True]
    )
    feats = feats * keep
    layer = jnp.pad(jnp.asarray(layout.layer_index, jnp.int32), (0, pad))
    alive = [s == ALIVE for s in jax.tree.leaves(state) if jnp.ndim(s) > 0]
    sizes = jnp.asarray([a.size for a in alive], jnp.float32)
    sparsity = 1.0 - sum(jnp.sum(a) for a in alive) / jnp.sum(sizes)
    alive_w = jnp.concatenate([a.reshape(-1) for a in alive]).astype(jnp.float32)
    pruned_gsnr = [g for g, s in zip(jax.tree.leaves(gsnr), jax.tree.leaves(state), strict=True)
                   if jnp.ndim(s) > 0]  # fmt: skip
    flips = [f for f, s in zip(jax.tree.leaves(obs.vitals.flip_rate), jax.tree.leaves(state),
                               strict=True) if jnp.ndim(s) > 0]  # fmt: skip
    n_alive = jnp.maximum(alive_w.sum(), 1.0)
    mean_alive = lambda xs: (
        jnp.sum(jnp.concatenate([x.reshape(-1) for x in xs]) * alive_w) / n_alive
    )
    trace = sum(jnp.sum(f) for f in jax.tree.leaves(fisher))
    progress = jnp.asarray(obs.step, jnp.float32) / obs.total_steps
    health = jnp.zeros((3,), jnp.float32) if obs.health is None else obs.health
    globals_ = jnp.stack(
        [
            progress,
            sparsity,
            jnp.mean(obs.target),
            mean_alive([jnp.log1p(g) for g in pruned_gsnr]),
            mean_alive(flips),
            jnp.log(trace + tiny),
            jnp.log(health[0] + 1e-6),
            jnp.clip(health[1], -1.0, 1.0),
            health[2],
        ]
    ).astype(jnp.float32)
    return AgentObs(
        regions=feats.astype(jnp.float32),
        region_valid=valid,
        region_layer=layer,
        layer_valid=jnp.arange(l_max) < layout.num_layers,
        globals=globals_,
    )
