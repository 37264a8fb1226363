"""Shrink & Perturb (Ash & Adams 2020, "On Warm-Starting Neural Network Training"), in the
continual form of Dohare et al. 2024 ("Loss of plasticity in deep continual learning", Nature
632): every weight decays towards zero and receives a little Gaussian noise, all the time.

Per host step ``theta <- (1 - shrink) * theta + noise * eps`` with ``eps ~ N(0, 1)``; applied
once per surgery interval of ``n`` steps as ``(1 - shrink)^n * theta + noise * sqrt(n) * eps``
(the same mean and, to first order, the same variance). It never prunes: it is the dense
network's remedy; biases are shrunk and perturbed like kernels (lysed weights stay zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree
from emrakul.controllers.base import Controller, Observation
from emrakul.controllers.basic import BasicState, _advance, _init
from emrakul.controllers.checks import check_positive, check_unit
from emrakul.controllers.registry import register
from emrakul.controllers.unit_reset import hold
from emrakul.surgery.rewrite import Rewrite


def shrink_and_noise(params: PyTree, keep: jax.Array, std: jax.Array, key: jax.Array) -> Rewrite:
    """The rewrite ``keep * theta + std * eps`` on every floating leaf (moments kept)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    adds = [
        std * jax.random.normal(k, jnp.shape(p), jnp.float32)
        for k, p in zip(keys, leaves, strict=False)
    ]
    return Rewrite(
        keep=jax.tree.map(lambda _: jnp.asarray(keep, jnp.float32), params),
        add=jax.tree.unflatten(treedef, adds),
        reset=jax.tree.map(lambda _: jnp.zeros((), bool), params),
    )


@register("shrink_perturb")
def shrink_perturb(shrink: float = 1e-4, noise: float = 1e-4) -> Controller:
    """Shrink & Perturb on every step (module docstring).

    Args:
      shrink: the per-step relative decay, in [0, 1).
      noise: the per-step standard deviation of the added noise (``>= 0``).

    Returns:
      A dense controller whose decisions shrink and perturb every weight.

    Raises:
      ValueError: ``shrink`` outside [0, 1) or a negative ``noise``.
    """
    shrink = check_unit("shrink", shrink, open_high=True)
    noise = check_positive("noise", noise, allow_zero=True)

    def decide(obs: Observation, state: BasicState):
        steps = jnp.asarray(1 if obs.interval is None else obs.interval, jnp.float32)
        keep = jnp.power(jnp.float32(1.0 - shrink), steps)
        std = jnp.float32(noise) * jnp.sqrt(steps)
        rewrite = shrink_and_noise(obs.params, keep, std, obs.key)
        return hold(obs, rewrite), _advance(state, jnp.ones((), bool))

    return Controller(name="shrink_perturb", init=_init, decide=decide)
