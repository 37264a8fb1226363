"""The DQN host's settings and their checks, and the counts that follow from them.

Deep Q-learning as in Mnih et al. 2015 ("Human-level control through deep reinforcement
learning"); the MinAtar defaults follow Ceron & Castro 2021 ("Revisiting Rainbow") and the
pruning defaults Obando-Ceron et al. 2024 ("In value-based deep reinforcement learning, a
pruned network is a good network").
"""

from __future__ import annotations

from typing import NamedTuple

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from emrakul import controllers as ctl
from emrakul.lab.hosts.rl_nets import POOLINGS
from emrakul.surgery.budgets import DISTRIBUTIONS

NETWORKS = ("minatar", "impala")


class DQNConfig(NamedTuple):
    """DQN hyperparameters (defaults: MinAtar DQN as in Ceron & Castro 2021, "Revisiting
    Rainbow", with the pruning settings of Obando-Ceron et al. 2024).

    Attributes:
      env_name: a gymnax environment id (``gymnax.registered_envs``) with discrete actions.
      num_envs: environments stepped in parallel (``vmap``) per vectorised step.
      total_env_steps: environment steps of the run (all environments, warm-up included);
        rounded down to whole surgery intervals.
      buffer_size: replay capacity (transitions).
      batch_size: transitions per gradient update.
      learning_starts: environment steps of uniformly random acting that fill the buffer before
        the first update (rounded up to whole vectorised steps).
      train_every: environment steps (counting all environments) per gradient update.
      target_update_every: gradient updates between copies of the online weights into the
        target network.
      gamma: discount factor.
      lr: Adam learning rate.
      adam_eps: Adam's epsilon.
      eps_start: initial ε of ε-greedy acting.
      eps_end: final ε.
      eps_fraction: fraction of ``total_env_steps`` over which ε decays linearly.
      huber_delta: the Huber loss's quadratic-to-linear threshold.
      width: width multiplier of the MinAtar network.
      pooling: ``"flatten"`` or ``"gap"`` (MinAtar network).
      network: the MinAtar network: ``"minatar"`` (MinAtar's CNN) or ``"impala"`` (the Impala
        ResNet, :class:`~emrakul.lab.hosts.rl_nets.ImpalaQNetwork`).
      mlp_hidden: hidden widths of the MLP used for non-MinAtar environments.
      controller: the pruning controller (``emrakul.controllers.NAMES``), ``"dense"`` included.
      sparsity: final target sparsity of the pruned kernels.
      distribution: per-layer budgets, ``"uniform"`` or ``"erk"``.
      prune_start: GMP's start, as a fraction of the updates.
      prune_end: GMP's end, as a fraction of the updates.
      prune_every: gradient updates between surgeries (one metrics row per interval).
    """

    env_name: str = "Breakout-MinAtar"
    num_envs: int = 4
    total_env_steps: int = 5_000_000
    buffer_size: int = 100_000
    batch_size: int = 32
    learning_starts: int = 1_000
    train_every: int = 4
    target_update_every: int = 250
    gamma: float = 0.99
    lr: float = 1e-4
    adam_eps: float = 3.125e-4
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_fraction: float = 0.05
    huber_delta: float = 1.0
    width: int = 1
    pooling: str = "flatten"
    network: str = "minatar"
    mlp_hidden: tuple[int, ...] = (64, 64)
    controller: str = "dense"
    sparsity: float = 0.95
    distribution: str = "erk"
    prune_start: float = 0.2
    prune_end: float = 0.8
    prune_every: int = 1000


def linear_epsilon(config: DQNConfig, env_steps: jax.Array) -> jax.Array:
    """ε-greedy's linear schedule from ``eps_start`` to ``eps_end`` over the first
    ``eps_fraction * total_env_steps`` environment steps, then constant."""
    horizon = max(config.eps_fraction * config.total_env_steps, 1.0)
    frac = jnp.clip(jnp.asarray(env_steps, jnp.float32) / horizon, 0.0, 1.0)
    return jnp.float32(config.eps_start) + frac * (config.eps_end - config.eps_start)


def _pos_int(config: DQNConfig, field: str) -> int:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"config.{field} must be a positive int, got {field}={value!r}")
    return int(value)


def _in_range(config: DQNConfig, field: str, lo: float, hi: float, hi_open: bool = False) -> None:
    value = getattr(config, field)
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    ok = ok and lo <= float(value) and (float(value) < hi if hi_open else float(value) <= hi)
    if not ok:
        interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"config.{field} must lie in {interval}, got {field}={value!r}")


def validate(config: DQNConfig) -> None:
    """Checks every field of ``config``; raises ``ValueError`` naming the first bad one."""
    if not isinstance(config, DQNConfig):
        raise TypeError(f"config must be a DQNConfig, got {type(config)}")
    if config.env_name not in gymnax.registered_envs:
        raise ValueError(f"config.env_name={config.env_name!r} is not a gymnax environment")
    for field in ("num_envs", "total_env_steps", "buffer_size", "batch_size", "train_every",
                  "target_update_every", "width", "prune_every"):  # fmt: skip
        _pos_int(config, field)
    if isinstance(config.learning_starts, bool) or not isinstance(
        config.learning_starts, int | np.integer
    ):
        raise ValueError(f"config.learning_starts must be an int, got {config.learning_starts!r}")
    if config.learning_starts < config.batch_size:
        raise ValueError(
            f"config.learning_starts={config.learning_starts} must be >= config.batch_size="
            f"{config.batch_size} (the first update samples a full batch)"
        )
    n, e = config.num_envs, config.train_every
    if n % e and e % n:
        raise ValueError(
            f"config.train_every={e} and config.num_envs={n} must divide one another "
            "(an update every train_every environment steps, counted over all environments)"
        )
    u = max(1, n // e)
    for field in ("target_update_every", "prune_every"):
        if getattr(config, field) % u:
            raise ValueError(
                f"config.{field}={getattr(config, field)} must be a multiple of the {u} updates "
                f"per vectorised step (num_envs={n} // train_every={e})"
            )
    if config.buffer_size < max(config.batch_size, n):
        raise ValueError(
            f"config.buffer_size={config.buffer_size} must be >= batch_size and num_envs"
        )
    _in_range(config, "gamma", 0.0, 1.0)
    _in_range(config, "eps_start", 0.0, 1.0)
    _in_range(config, "eps_end", 0.0, 1.0)
    _in_range(config, "eps_fraction", 0.0, 1.0)
    _in_range(config, "sparsity", 0.0, 1.0, hi_open=True)
    _in_range(config, "prune_start", 0.0, 1.0)
    _in_range(config, "prune_end", 0.0, 1.0)
    if config.prune_end < config.prune_start:
        raise ValueError(
            f"config.prune_end={config.prune_end} must be >= prune_start={config.prune_start}"
        )
    for field in ("lr", "adam_eps", "huber_delta"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"config.{field} must be > 0, got {field}={value!r}")
    if config.pooling not in POOLINGS:
        raise ValueError(f"config.pooling must be one of {POOLINGS}, got {config.pooling!r}")
    if config.network not in NETWORKS:
        raise ValueError(f"config.network must be one of {NETWORKS}, got {config.network!r}")
    if config.distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"config.distribution must be one of {DISTRIBUTIONS}, got {config.distribution!r}"
        )
    if config.controller not in ctl.NAMES:
        raise ValueError(f"config.controller must be one of {ctl.NAMES}, got {config.controller!r}")
    hidden = config.mlp_hidden
    if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"config.mlp_hidden must hold positive ints, got {hidden!r}")
    if count_intervals(config) < 1:
        raise ValueError(
            f"config.total_env_steps={config.total_env_steps} is less than the warm-up "
            f"({_warmup_steps(config)} environment steps) plus one surgery interval "
            f"(prune_every * train_every = {config.prune_every * config.train_every})"
        )


def _warmup_steps(config: DQNConfig) -> int:
    return -(-config.learning_starts // config.num_envs) * config.num_envs


def count_intervals(config: DQNConfig) -> int:
    """Surgery intervals of a run of ``config`` (``prune_every`` updates each, after warm-up)."""
    per_interval = config.prune_every * config.train_every
    return (config.total_env_steps - _warmup_steps(config)) // per_interval


def is_minatar(env_name: str) -> bool:
    """Whether ``env_name`` is a MinAtar game (binary image observations)."""
    return env_name.endswith("-MinAtar")
