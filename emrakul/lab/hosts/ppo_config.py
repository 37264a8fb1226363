"""The PPO host's settings and their checks (PPO-clip, Schulman et al. 2017, "Proximal Policy
Optimization Algorithms"; defaults after PureJaxRL's CartPole settings, Lu et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import gymnax

from emrakul import controllers as ctl
from emrakul.lab.hosts.rl_nets import POOLINGS


class PPOHostConfig(NamedTuple):
    """Settings of a PPO host run (defaults: PureJaxRL's CartPole settings, shorter).

    Attributes:
      env_name: a gymnax environment (``CartPole-v1``, ``Breakout-MinAtar``, ...).
      num_envs: vectorised environments.
      num_steps: rollout length per environment and iteration.
      total_env_steps: environment steps of the whole run (all environments).
      epochs: passes over each rollout.
      num_minibatches: minibatches per pass (must divide ``num_envs * num_steps``).
      lr: Adam learning rate.
      gamma, gae_lambda: discount and GAE lambda.
      clip_eps: PPO's ratio clip.
      ent_coef, vf_coef: entropy bonus and value-loss weights.
      max_grad_norm: global-norm gradient clip before Adam.
      width: MinAtar network width multiplier.
      pooling: ``"flatten"`` or ``"gap"`` (MinAtar torso).
      mlp_hidden: hidden widths of the MLP actor and critic (vector observations).
      controller: the pruning controller's name (``emrakul.controllers.NAMES``).
      sparsity: final target sparsity of the pruned kernels.
      distribution: ``"uniform"`` or ``"erk"``.
      prune_start, prune_end: GMP's schedule (fractions of training).
      every: gradient updates between surgeries; a multiple of ``epochs * num_minibatches``.
      seed: the wrapper's own seed.
    """

    env_name: str = "CartPole-v1"
    num_envs: int = 4
    num_steps: int = 128
    total_env_steps: int = 100_000
    epochs: int = 4
    num_minibatches: int = 4
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    width: int = 1
    pooling: str = "flatten"
    mlp_hidden: Sequence[int] = (64, 64)
    controller: str = "dense"
    sparsity: float = 0.95
    distribution: str = "erk"
    prune_start: float = 0.2
    prune_end: float = 0.8
    every: int = 64
    seed: int = 0


def validate(config: PPOHostConfig) -> None:
    """Checks ``config``; raises ``ValueError`` naming the bad field."""

    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise ValueError(f"PPOHostConfig.{field}={getattr(config, field)!r}: {why}")

    for f in ("num_envs", "num_steps", "total_env_steps", "epochs", "num_minibatches", "every"):
        v = getattr(config, f)
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f, "a positive int")
    need((config.num_envs * config.num_steps) % config.num_minibatches == 0, "num_minibatches",
         "must divide num_envs * num_steps")  # fmt: skip
    per_iter = config.epochs * config.num_minibatches
    need(config.every % per_iter == 0, "every", f"a multiple of epochs * num_minibatches = "
         f"{per_iter} (surgeries happen at the start of an iteration)")  # fmt: skip
    need(config.lr > 0, "lr", "must be > 0")
    need(0 <= config.gamma <= 1, "gamma", "must lie in [0, 1]")
    need(0 <= config.gae_lambda <= 1, "gae_lambda", "must lie in [0, 1]")
    need(config.clip_eps > 0, "clip_eps", "must be > 0")
    need(0 <= config.sparsity < 1, "sparsity", "must lie in [0, 1)")
    need(0 <= config.prune_start < config.prune_end <= 1, "prune_start",
         "need 0 <= prune_start < prune_end <= 1")  # fmt: skip
    need(config.pooling in POOLINGS, "pooling", f"one of {POOLINGS}")
    need(config.controller in ctl.NAMES, "controller", f"one of {ctl.NAMES}")
    need(config.env_name in gymnax.registered_envs, "env_name", "not a gymnax environment")
    iters = config.total_env_steps // (config.num_envs * config.num_steps)
    need(iters >= config.every // per_iter, "total_env_steps",
         "too few for one surgery interval")  # fmt: skip
