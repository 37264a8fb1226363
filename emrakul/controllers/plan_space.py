"""The surgery plan: an action space that contains the best heuristics and reaches past them.

A :class:`SurgeryPlan` is what a learned or tuned controller decides at a surgery, as *raw*
unbounded numbers whose zero is the neutral action. A static :class:`PlanSpace` maps it to the
concrete knobs (:class:`PlanKnobs`) with ``neutral + span * tanh(raw)``, so every plan is valid
and the all-zero plan reproduces a named heuristic exactly (:func:`PlanSpace.breathing`:
breathing, the EMA-saliency controller with hysteresis; :func:`PlanSpace.gmp`: gradual magnitude
pruning, Zhu & Gupta 2017).

The knobs (DESIGN.md, "making the learned controller win"):

* Surgeon General, per layer: the final allocation logit (:mod:`emrakul.surgery.allocation`:
  exact counts, fixed global total), the score mix (weights on log|theta|, the log of an EMA of
  |theta * g| as in SNIP / Molchanov et al. 2019, log GSNR of Liu et al. 2020, log empirical
  Fisher), the EMA decay, the hysteresis margin of incumbents, the churn (fraction of alive
  weights offered for swapping) and the regrowth weight of the gradient (RigL's |g|, Evci et
  al. 2020) against the score itself (a sedated weight's own magnitude or saliency);
* Surgeon General, global: the schedule's exponent (3 is the cubic schedule of GMP), shifts of
  its start and end, and the Gumbel temperature of the scores;
* Specialists: a bounded rank bias per region (output unit).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

#: The score-mix features, in the order of ``SurgeryPlan.mix``'s last axis.
MIX_FEATURES = ("log_magnitude", "log_saliency", "log_gsnr", "log_fisher")
NUM_MIX = len(MIX_FEATURES)
BASES = ("breathing", "gmp")


class SurgeryPlan(NamedTuple):
    """A raw plan (zero = neutral); per-layer fields ``[L]``, per-region ``[R]``.

    Attributes:
      alloc: ``[L]`` final allocation logits.
      mix: ``[L, 4]`` score-mix deviations (over :data:`MIX_FEATURES`).
      decay: ``[L]`` saliency-EMA decay.
      hysteresis: ``[L]`` incumbents' margin.
      churn: ``[L]`` swap fraction while the schedule runs.
      regrow: ``[L]`` weight of log|g| in the regrowth score.
      shape: scalar, the schedule exponent.
      start: scalar, the schedule start shift.
      end: scalar, the schedule end shift.
      temperature: scalar, the Gumbel noise scale on log scores.
      bias: ``[R]`` per-region rank bias.
    """

    alloc: jax.Array
    mix: jax.Array
    decay: jax.Array
    hysteresis: jax.Array
    churn: jax.Array
    regrow: jax.Array
    shape: jax.Array
    start: jax.Array
    end: jax.Array
    temperature: jax.Array
    bias: jax.Array


class PlanKnobs(NamedTuple):
    """The concrete values of a plan (same fields and shapes as :class:`SurgeryPlan`)."""

    alloc: jax.Array
    mix: jax.Array
    decay: jax.Array
    hysteresis: jax.Array
    churn: jax.Array
    regrow: jax.Array
    shape: jax.Array
    start: jax.Array
    end: jax.Array
    temperature: jax.Array
    bias: jax.Array


def zero_plan(num_layers: int, num_regions: int) -> SurgeryPlan:
    """The neutral (all-zero) raw plan for ``num_layers`` layers and ``num_regions`` regions."""
    zl = jnp.zeros((num_layers,), jnp.float32)
    z = jnp.float32(0.0)
    return SurgeryPlan(zl, jnp.zeros((num_layers, NUM_MIX), jnp.float32), zl, zl, zl, zl,
                       z, z, z, z, jnp.zeros((num_regions,), jnp.float32))  # fmt: skip


def _bounded(raw: jax.Array, neutral: float, low: float, high: float) -> jax.Array:
    """``neutral + (high - neutral) * tanh(raw)`` above, ``(neutral - low) * tanh`` below: exactly
    ``neutral`` at ``raw = 0``, always in ``[low, high]``."""
    t = jnp.tanh(jnp.asarray(raw, jnp.float32))
    span = jnp.where(t > 0, high - neutral, neutral - low)
    return jnp.float32(neutral) + span * t


@dataclasses.dataclass(frozen=True)
class PlanSpace:
    """The static map from raw plans to knobs: the neutral heuristic and the spans.

    Attributes:
      base: ``"breathing"`` (scores: the saliency EMA) or ``"gmp"`` (scores: |theta|).
      start, end: the neutral schedule window (fractions of training).
      decay, hysteresis, churn: the neutral values of those knobs.
      alloc_span: the largest |allocation logit|.
      mix_span: the largest |score-mix deviation|.
      regrow_span: the largest |regrowth weight of log|g||.
      shape_range: ``(low, high)`` of the schedule exponent (neutral 3).
      shift_span: the largest shift of start and end.
      max_temperature: the largest Gumbel temperature (neutral 0).
      bias_span: the largest |region rank bias|.
      lyse_at_end: whether weights still sedated when the schedule ends are lysed (removed for
        good: a deterministic consequence of sustained sedation, never a sampled act).
      churn_after_end: whether swapping goes on after the schedule has reached its target (a
        topology that keeps moving, as RigL's on a stream; sedated weights stay wakeable when
        ``lyse_at_end`` is off). The default, off, stops it at the window's end.
    """

    base: str = "breathing"
    start: float = 0.2
    end: float = 0.8
    decay: float = 0.9
    hysteresis: float = 0.1
    churn: float = 0.05
    alloc_span: float = 2.0
    mix_span: float = 1.0
    regrow_span: float = 1.0
    shape_range: tuple[float, float] = (1.0, 6.0)
    shift_span: float = 0.15
    max_temperature: float = 1.0
    bias_span: float = 2.0
    lyse_at_end: bool = True
    churn_after_end: bool = False

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {self.base!r}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"need 0 <= start <= end <= 1, got {self.start}, {self.end}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {self.decay}")
        if not (self.hysteresis >= 0 and 0.0 <= self.churn <= 1.0):
            raise ValueError("need hysteresis >= 0 and churn in [0, 1]")
        low, high = self.shape_range
        if not 0 < low <= 3.0 <= high:
            raise ValueError(f"shape_range must contain 3 and be positive, got {self.shape_range}")
        spans = (self.alloc_span, self.mix_span, self.regrow_span, self.shift_span)
        if min(*spans, self.max_temperature, self.bias_span) < 0:
            raise ValueError("spans must be >= 0")

    @classmethod
    def breathing(cls, **kwargs) -> PlanSpace:
        """Neutral = :func:`emrakul.controllers.breathing` with its defaults."""
        return cls(base="breathing", **kwargs)

    @classmethod
    def gmp(cls, **kwargs) -> PlanSpace:
        """Neutral = :func:`emrakul.controllers.gmp` (magnitude, no churn, no hysteresis)."""
        return cls(**{"base": "gmp", "hysteresis": 0.0, "churn": 0.0, **kwargs})

    def knobs(self, plan: SurgeryPlan) -> PlanKnobs:
        """The concrete knobs of a raw plan (exactly the neutral values where ``plan`` is 0)."""
        lo_shape, hi_shape = self.shape_range
        s = self.shift_span
        return PlanKnobs(
            alloc=self.alloc_span * jnp.tanh(plan.alloc),
            mix=self.mix_span * jnp.tanh(plan.mix),
            decay=_bounded(plan.decay, self.decay, 0.0, 0.99),
            hysteresis=_bounded(plan.hysteresis, self.hysteresis, 0.0, max(1.0, self.hysteresis)),
            churn=_bounded(plan.churn, self.churn, 0.0, 0.5 if self.churn <= 0.5 else 1.0),
            regrow=self.regrow_span * jnp.tanh(plan.regrow),
            shape=_bounded(plan.shape, 3.0, lo_shape, hi_shape),
            start=_bounded(plan.start, 0.0, -min(s, self.start), s),
            end=_bounded(plan.end, 0.0, -s, min(s, 1.0 - self.end)),
            temperature=self.max_temperature * jnp.maximum(jnp.tanh(plan.temperature), 0.0),
            bias=self.bias_span * jnp.tanh(plan.bias),
        )
