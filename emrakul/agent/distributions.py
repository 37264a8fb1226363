"""Small pure action distributions for the Magistrate (no distrax).

Each distribution is a ``NamedTuple`` of arrays (so a pytree that passes through ``jit``,
``vmap`` and ``lax.scan``) with pure methods. Shapes broadcast elementwise: ``log_prob`` and
``entropy`` return one value per element (per row for :class:`Categorical`); the caller sums.

* :class:`LogitNormal` - values in ``(0, 1)`` (per-layer budgets, the regrowth fraction):
  ``X = sigmoid(Y)``, ``Y ~ Normal(loc, scale)``. Reparameterisable; ``log_prob`` includes the
  Jacobian of the sigmoid and ``entropy`` is the exact differential entropy of ``X`` (the
  expectation of the log-Jacobian has no closed form and is computed with Gauss-Hermite
  quadrature, accurate to ~1e-5 for ``scale <= 3``). :meth:`LogitNormal.latent_entropy` gives
  the Gaussian entropy of ``Y`` instead, which is what a PPO entropy bonus on the logit-space
  policy usually means; the two differ by ``E[log sigmoid(Y) + log sigmoid(-Y)]``.
* :class:`LogNormal` - positive values (the Gumbel temperature): ``X = exp(Y)``; entropy and
  log-density in closed form.
* :class:`Categorical` - discrete choices with an optional mask of the allowed entries; masked
  entries get probability 0 exactly (their log-probability is a large finite negative number,
  never ``-inf``, so entropies and gradients stay finite).

For deterministic deployment the continuous distributions offer :meth:`~LogitNormal.median`
(``sigmoid(loc)``, ``exp(loc)``: the image of the latent Gaussian's mode, which is what a
"deterministic action" means for a squashed Gaussian policy) rather than the true mode of the
squashed density.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_LOG_2PI = float(np.log(2.0 * np.pi))
_MASKED_LOGIT = -1e9
# Gauss-Hermite nodes / weights for E[f(Y)], Y ~ N(0, 1): E f = sum_i w_i f(sqrt(2) t_i) / sqrt(pi).
_GH_T, _GH_W = np.polynomial.hermite.hermgauss(32)
_GH_NODES = (np.sqrt(2.0) * _GH_T).astype(np.float32)
_GH_WEIGHTS = (_GH_W / np.sqrt(np.pi)).astype(np.float32)
# Values handed to log_prob are clipped this far inside (0, 1) so logit() stays finite in float32.
_UNIT_EPS = 1e-7


def _normal_log_prob(y: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
    z = (y - loc) / scale
    return -0.5 * z * z - jnp.log(scale) - 0.5 * _LOG_2PI


def _normal_entropy(scale: jax.Array) -> jax.Array:
    return 0.5 + 0.5 * _LOG_2PI + jnp.log(scale)


class LogitNormal(NamedTuple):
    """``X = sigmoid(Y)`` with ``Y ~ Normal(loc, scale)``: a distribution on ``(0, 1)``.

    Attributes:
      loc: the mean of ``Y`` (logit space); ``loc = 0`` gives median ``0.5``.
      scale: the standard deviation of ``Y`` (positive).
    """

    loc: jax.Array
    scale: jax.Array

    def sample_latent(self, key: jax.Array) -> jax.Array:
        """A reparameterised sample of ``Y`` (logit space), shaped like ``loc`` / ``scale``."""
        shape = jnp.broadcast_shapes(jnp.shape(self.loc), jnp.shape(self.scale))
        return self.loc + self.scale * jax.random.normal(key, shape, jnp.float32)

    def sample(self, key: jax.Array) -> jax.Array:
        """A reparameterised sample of ``X`` in ``(0, 1)``: ``sigmoid(sample_latent(key))``."""
        return jax.nn.sigmoid(self.sample_latent(key))

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log-density of ``X`` at ``x``: ``log N(logit x) - log x - log(1 - x)``.

        ``x`` is clipped to ``[1e-7, 1 - 1e-7]`` (float32 ``sigmoid`` saturates for
        ``|y| > ~16``; such samples have negligible probability for the scales used here).
        """
        x = jnp.clip(jnp.asarray(x, jnp.float32), _UNIT_EPS, 1.0 - _UNIT_EPS)
        y = jnp.log(x) - jnp.log1p(-x)
        return _normal_log_prob(y, self.loc, self.scale) - jnp.log(x) - jnp.log1p(-x)

    def latent_log_prob(self, y: jax.Array) -> jax.Array:
        """Log-density of ``Y`` at ``y`` (no Jacobian)."""
        return _normal_log_prob(y, self.loc, self.scale)

    def entropy(self) -> jax.Array:
        """The differential entropy of ``X``: ``H(Y) + E[log sigmoid(Y) + log sigmoid(-Y)]``.

        The expectation uses 32-point Gauss-Hermite quadrature (error < 1e-6 for ``scale <= 2``
        and ~1e-5 at ``scale = 3``; the agent caps scales at ``e``). Always ``<= 0``, with
        its maximum near ``loc = 0, scale ~ 1.7`` (close to the uniform distribution).
        """
        loc, scale = jnp.asarray(self.loc), jnp.asarray(self.scale)
        y = loc[..., None] + scale[..., None] * _GH_NODES
        log_jac = jax.nn.log_sigmoid(y) + jax.nn.log_sigmoid(-y)
        return _normal_entropy(scale) + jnp.sum(_GH_WEIGHTS * log_jac, axis=-1)

    def latent_entropy(self) -> jax.Array:
        """The Gaussian entropy of ``Y`` (logit space): ``0.5 log(2 pi e scale^2)``."""
        return _normal_entropy(jnp.broadcast_to(self.scale, jnp.shape(self.loc)))

    def median(self) -> jax.Array:
        """``sigmoid(loc)``: the median of ``X`` (the deterministic action)."""
        return jax.nn.sigmoid(jnp.broadcast_to(self.loc, jnp.shape(self.scale)))


class LogNormal(NamedTuple):
    """``X = exp(Y)`` with ``Y ~ Normal(loc, scale)``: a distribution on ``(0, inf)``.

    Attributes:
      loc: the mean of ``log X``.
      scale: the standard deviation of ``log X`` (positive).
    """

    loc: jax.Array
    scale: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """A reparameterised sample, shaped like ``loc`` / ``scale``."""
        shape = jnp.broadcast_shapes(jnp.shape(self.loc), jnp.shape(self.scale))
        return jnp.exp(self.loc + self.scale * jax.random.normal(key, shape, jnp.float32))

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log-density at ``x > 0``: ``log N(log x) - log x`` (``x`` floored at 1e-30)."""
        log_x = jnp.log(jnp.maximum(jnp.asarray(x, jnp.float32), 1e-30))
        return _normal_log_prob(log_x, self.loc, self.scale) - log_x

    def entropy(self) -> jax.Array:
        """The differential entropy, in closed form: ``loc + 0.5 log(2 pi e scale^2)``."""
        return self.loc + _normal_entropy(self.scale)

    def median(self) -> jax.Array:
        """``exp(loc)``: the median (the deterministic action)."""
        return jnp.exp(jnp.broadcast_to(self.loc, jnp.shape(self.scale)))

    def mode(self) -> jax.Array:
        """``exp(loc - scale^2)``: the mode of the density."""
        return jnp.exp(self.loc - jnp.square(self.scale))


class Categorical(NamedTuple):
    """A categorical over the last axis, stored as normalised (masked) log-probabilities.

    Build it with :meth:`from_logits`. Entries that are masked out have probability exactly 0
    and log-probability about ``-1e9``: they are never sampled nor chosen by :meth:`mode`.

    Attributes:
      log_probs: ``float32 [..., K]``, normalised log-probabilities (``logsumexp = 0``).
    """

    log_probs: jax.Array

    @classmethod
    def from_logits(cls, logits: jax.Array, mask: jax.Array | None = None) -> Categorical:
        """Normalises ``logits`` over the last axis.

        Args:
          logits: ``[..., K]`` unnormalised log-probabilities.
          mask: optional bool, broadcastable to ``logits``; ``False`` entries are disallowed.
            At least one entry per row must be allowed (a row with none becomes uniform over
            the masked entries, which is not meaningful).

        Returns:
          The :class:`Categorical`.
        """
        logits = jnp.asarray(logits, jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, _MASKED_LOGIT)
        return cls(jax.nn.log_softmax(logits, axis=-1))

    @property
    def probs(self) -> jax.Array:
        """``[..., K]`` probabilities."""
        return jnp.exp(self.log_probs)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log-probability of the integer choices ``x`` (shape ``log_probs.shape[:-1]``)."""
        x = jnp.asarray(x, jnp.int32)
        return jnp.take_along_axis(self.log_probs, x[..., None], axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
        """``-sum p log p`` per row (masked entries contribute exactly 0)."""
        p = self.probs
        return -jnp.sum(jnp.where(p > 0, p * self.log_probs, 0.0), axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        """An ``int32`` sample per row (Gumbel-max)."""
        return jax.random.categorical(key, self.log_probs, axis=-1).astype(jnp.int32)

    def mode(self) -> jax.Array:
        """The most probable entry per row (``int32``; the first on ties)."""
        return jnp.argmax(self.log_probs, axis=-1).astype(jnp.int32)
