"""What the Magistrate observes: per-region vital signs and a few global features.

Per output unit of every pruned kernel (``Units`` regions, :mod:`emrakul.vitals.regions`), the
mean of each per-parameter signal of :data:`REGION_FEATURES`: log-magnitude, log-|gradient|,
log1p-GSNR, log-Fisher, sign-flip rate, log1p dormancy age, the alive and sedated fractions, the
unit's ReDo activation score (Sokar, Agarwal, Castro & Evci, 2023, "The Dormant Neuron
Phenomenon in Deep Reinforcement Learning"; 0 when the loop measured none), plus the region's
log-size and its layer's relative depth. Every feature is z-scored over the host's valid
regions, so the same policy transfers between hosts of different sizes (DESIGN.md: keep
observations normalised). Rows are padded to ``r_max``; layers to ``l_max``. Observing a new
vital sign is one :class:`RegionFeature` entry (it widens the observation, so a policy trained
on the old width needs retraining).

Globals (:data:`GLOBAL_NAMES`) come from the observation alone (so a deployed policy sees what
the training policy saw): progress through training, current and target sparsity, the mean
log1p-GSNR and mean flip rate of alive weights, the log Fisher trace, and the training health
the wrapper tracks (``Observation.health``): log training loss, its relative slope (clipped to
[-1, 1]) and the last validation accuracy (zeros when not tracked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul import vitals as vit
from emrakul._tree import PyTree
from emrakul.agent.spaces import AgentObs
from emrakul.controllers.base import Observation
from emrakul.surgery.lifecycle import ALIVE, SEDATED
from emrakul.vitals import regions as rg

_TINY = 1e-12


class HostSignals(NamedTuple):
    """What the region features read: the controller's observation and its derived signals.

    Attributes:
      obs: the controller :class:`~emrakul.controllers.base.Observation` (vitals present).
      gsnr: :func:`emrakul.vitals.gsnr` of ``obs.vitals``.
      fisher: :func:`emrakul.vitals.fisher` of ``obs.vitals``.
    """

    obs: Observation
    gsnr: PyTree
    fisher: PyTree


class RegionFeature(NamedTuple):
    """One observed per-parameter signal, averaged per region.

    Attributes:
      name: the feature's name (its column is ``name/mean``; columns are sorted by name).
      signal: ``signal(host: HostSignals) -> tree`` shaped like the params.
    """

    name: str
    signal: Callable[[HostSignals], PyTree]


def _lifecycle_is(code: int) -> Callable[[HostSignals], PyTree]:
    def signal(h: HostSignals) -> PyTree:
        return jax.tree.map(
            lambda s, w: jnp.broadcast_to(s == code, jnp.shape(w)), h.obs.state, h.obs.params
        )

    return signal


def _dormant(h: HostSignals) -> PyTree:
    obs = h.obs
    scores = (
        obs.activations
        if obs.activations is not None
        else jax.tree.map(lambda _: jnp.float32(0.0), obs.params)
    )
    return jax.tree.map(
        lambda a, w: jnp.broadcast_to(jnp.asarray(a, jnp.float32), jnp.shape(w)),
        scores,
        obs.params,
    )


REGION_FEATURES: tuple[RegionFeature, ...] = (
    RegionFeature(
        "logmag", lambda h: jax.tree.map(lambda w: jnp.log(jnp.abs(w) + _TINY), h.obs.params)
    ),
    RegionFeature(
        "loggrad",
        lambda h: jax.tree.map(lambda g: jnp.log(jnp.abs(g) + _TINY), vit.grad_mean(h.obs.vitals)),
    ),
    RegionFeature("gsnr", lambda h: jax.tree.map(jnp.log1p, h.gsnr)),
    RegionFeature("fisher", lambda h: jax.tree.map(lambda f: jnp.log(f + _TINY), h.fisher)),
    RegionFeature("flip", lambda h: h.obs.vitals.flip_rate),
    RegionFeature(
        "age", lambda h: jax.tree.map(lambda a: jnp.log1p(a.astype(jnp.float32)), h.obs.vitals.age)
    ),
    RegionFeature("alive", _lifecycle_is(ALIVE)),
    RegionFeature("sedated", _lifecycle_is(SEDATED)),
    RegionFeature("dormant", _dormant),
)
"""The per-region signals the agent observes (a new one is one entry)."""

SIGNALS = tuple(f.name for f in REGION_FEATURES)
FEATURE_NAMES = (*sorted(SIGNALS), "log_size", "depth")
"""The columns of ``AgentObs.regions`` (signals in sorted order, as ``regions.summarize``)."""
NUM_FEATURES = len(FEATURE_NAMES)
GLOBAL_NAMES = (
    "progress",
    "sparsity",
    "target_sparsity",
    "alive_log1p_gsnr",
    "alive_flip_rate",
    "log_fisher_trace",
    "log_loss",
    "loss_slope",
    "val_accuracy",
)
"""The entries of ``AgentObs.globals``, in order."""
NUM_GLOBALS = len(GLOBAL_NAMES)


def _zscore(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Per-column z-scores over the valid rows (0 on padding). Columns are shifted by their first
    row first, so a constant column is exactly 0 whatever the padding (the ``1e-6`` variance
    floor would otherwise amplify rounding in its mean a thousandfold)."""
    x = x - x[:1]
    w = valid[:, None].astype(x.dtype)
    n = jnp.maximum(w.sum(0), 1.0)
    mean = (x * w).sum(0) / n
    var = (((x - mean) * w) ** 2).sum(0) / n
    return jnp.where(valid[:, None], (x - mean) / jnp.sqrt(var + 1e-6), 0.0)


def region_signals(host: HostSignals) -> dict[str, PyTree]:
    """Every per-parameter signal of :data:`REGION_FEATURES`, by name."""
    return {f.name: f.signal(host) for f in REGION_FEATURES}


def _region_matrix(
    host: HostSignals, layout: rg.RegionLayout, r_max: int, drop: tuple[str, ...]
) -> jax.Array:
    """The z-scored ``[r_max, NUM_FEATURES]`` region features (dropped groups zeroed)."""
    summary = rg.summarize(region_signals(host), layout)
    depth = layout.layer_index / max(layout.num_layers - 1, 1)
    extra = jnp.stack(
        [jnp.log(jnp.asarray(layout.region_size, jnp.float32)), jnp.asarray(depth, jnp.float32)],
        axis=1,
    )
    feats = jnp.concatenate([summary.features, extra], axis=1)
    feats = jnp.pad(feats, ((0, r_max - layout.num_regions), (0, 0)))
    feats = _zscore(feats, jnp.arange(r_max) < layout.num_regions)
    keep = jnp.asarray(
        [name.split("/")[0] not in drop for name in summary.feature_names] + [True, True]
    )
    return feats * keep


def _global_features(host: HostSignals) -> jax.Array:
    """The ``[NUM_GLOBALS]`` global features of :data:`GLOBAL_NAMES`."""
    obs = host.obs
    pruned = [jnp.ndim(s) > 0 for s in jax.tree.leaves(obs.state)]
    alive = [s == ALIVE for s, p in zip(jax.tree.leaves(obs.state), pruned, strict=True) if p]
    sizes = jnp.asarray([a.size for a in alive], jnp.float32)
    alive_w = jnp.concatenate([a.reshape(-1) for a in alive]).astype(jnp.float32)
    n_alive = jnp.maximum(alive_w.sum(), 1.0)

    def mean_alive(tree: PyTree, f: Callable = lambda x: x) -> jax.Array:
        xs = [f(x) for x, p in zip(jax.tree.leaves(tree), pruned, strict=True) if p]
        return jnp.sum(jnp.concatenate([x.reshape(-1) for x in xs]) * alive_w) / n_alive

    trace = sum(jnp.sum(f) for f in jax.tree.leaves(host.fisher))
    health = jnp.zeros((3,), jnp.float32) if obs.health is None else obs.health
    values = {
        "progress": jnp.asarray(obs.step, jnp.float32) / obs.total_steps,
        "sparsity": 1.0 - sum(jnp.sum(a) for a in alive) / jnp.sum(sizes),
        "target_sparsity": jnp.mean(obs.target),
        "alive_log1p_gsnr": mean_alive(host.gsnr, jnp.log1p),
        "alive_flip_rate": mean_alive(obs.vitals.flip_rate),
        "log_fisher_trace": jnp.log(trace + _TINY),
        "log_loss": jnp.log(health[0] + 1e-6),
        "loss_slope": jnp.clip(health[1], -1.0, 1.0),
        "val_accuracy": health[2],
    }
    return jnp.stack([values[name] for name in GLOBAL_NAMES]).astype(jnp.float32)


LAYER_FEATURE_NAMES = ("log_size", "log_fan_in", "log_fan_out")
"""The columns of ``AgentObs.layers`` (each centred over the host's layers)."""
NUM_LAYER_FEATURES = len(LAYER_FEATURE_NAMES)


def layer_features(layout: rg.RegionLayout, l_max: int) -> jax.Array:
    """Static ``[l_max, 3]`` layer features: log weights, log fan-in (weights per output unit)
    and log fan-out (output units) of each pruned layer, centred over the host's layers (so a
    policy reads relative sizes, which transfer between hosts); zero rows for padding."""

    size = np.asarray([np.prod(layout.leaf_shapes[i]) for i in layout.observed], np.float64)
    units = np.asarray(layout.counts, np.float64)
    table = np.log(np.stack([size, size / units, units], axis=1))
    table = table - table.mean(axis=0, keepdims=True)
    table = np.pad(table, ((0, l_max - table.shape[0]), (0, 0)))
    return jnp.asarray(table, jnp.float32)


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
      An :class:`~emrakul.agent.spaces.AgentObs`.

    Raises:
      ValueError: if the host has more regions or layers than the padding, ``drop`` names an
        unknown signal, or the observation carries no vital signs.
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
    host = HostSignals(obs, vit.gsnr(obs.vitals), vit.fisher(obs.vitals))
    feats = _region_matrix(host, layout, r_max, drop)
    pad = r_max - layout.num_regions
    return AgentObs(
        regions=feats.astype(jnp.float32),
        region_valid=jnp.arange(r_max) < layout.num_regions,
        region_layer=jnp.pad(jnp.asarray(layout.layer_index, jnp.int32), (0, pad)),
        layer_valid=jnp.arange(l_max) < layout.num_layers,
        globals=_global_features(host),
        layers=layer_features(layout, l_max),
    )
