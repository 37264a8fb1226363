"""A PPO host on gymnax environments, pruned while it learns (issue 5's actor-critic host).

PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms") with GAE (Schulman et
al. 2016) from rlax, written as one compiled program in the PureJaxRL style (Lu et al. 2022,
"Discovered Policy Optimisation"): vectorised gymnax environments, a rollout of ``num_steps``
steps per environment, then ``epochs`` passes of ``num_minibatches`` minibatch updates, all inside
``lax.scan``; it vmaps over seeds (``jax.jit(jax.vmap(ppo.train))(keys)``).

The optimizer is ``emrakul.wrap`` around Adam (gradients clipped by global norm first), so any
controller prunes the actor-critic exactly as it prunes the classifiers; the policy acts and
learns with the masked weights (:func:`emrakul.masked`). A surgery interval is
``every // (epochs * num_minibatches)`` PPO iterations, and the surgery is the first minibatch
update of the interval's first iteration (a static position: no ``lax.cond`` on a counter that
``vmap`` would turn into both branches).

Networks: for ``*-MinAtar`` games, MinAtar's torso (:class:`~emrakul.lab.hosts.rl_nets.Conv2D`, 16w
channels 3x3 'VALID', flatten or global average pooling, Dense 128w) with a policy and a value
head; otherwise separate tanh MLPs for the actor and the critic (PureJaxRL's CartPole network).
Initialisers are LeCun-normal (no orthogonal init: its QR deadlocks XLA:CPU inside
``jit(vmap)``), with the policy head scaled by 0.01 so that the initial policy is near uniform.
Metrics (mean return of the episodes completed in an interval, losses, sparsity) are reduced
inside the scan; nothing per-step leaves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import optax
import rlax

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod
from emrakul.lab.hosts.dqn import step_envs
from emrakul.lab.hosts.rl_nets import POOLINGS, minatar_torso
from emrakul.lab.meta import ppo

_SMALL = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")


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


class MinAtarActorCritic(nn.Module):
    """MinAtar torso (Young & Tian 2019) with policy-logit and value heads."""

    num_actions: int
    width: int = 1
    pooling: str = "flatten"

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = minatar_torso(obs, self.width, self.pooling, type(self).__name__)
        logits = nn.Dense(self.num_actions, kernel_init=_SMALL, name="policy")(x)
        value = nn.Dense(1, name="value")(x)
        return logits, value[..., 0]


class MLPActorCritic(nn.Module):
    """Separate tanh MLPs for the actor and the critic (vector observations)."""

    num_actions: int
    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs.astype(jnp.float32)
        a, v = x, x
        for i, h in enumerate(self.hidden):
            a = nn.tanh(nn.Dense(h, name=f"actor_{i}")(a))
            v = nn.tanh(nn.Dense(h, name=f"critic_{i}")(v))
        logits = nn.Dense(self.num_actions, kernel_init=_SMALL, name="policy")(a)
        value = nn.Dense(1, name="value")(v)
        return logits, value[..., 0]


class PPOHostState(NamedTuple):
    """What the PPO host carries (checkpointable as a whole)."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array  # [num_envs] running return
    key: jax.Array
    interval: jax.Array


class PPOHostMetrics(NamedTuple):
    """One row per surgery interval (reduced inside the scan)."""

    env_steps: jax.Array
    mean_return: jax.Array  # of the episodes completed in the interval (NaN if none)
    episodes: jax.Array
    policy_loss: jax.Array
    value_loss: jax.Array
    entropy: jax.Array
    sparsity: jax.Array


class PPOHost(NamedTuple):
    """The compiled pieces (as :class:`emrakul.lab.loop.Trainer`)."""

    config: PPOHostConfig
    num_intervals: int
    iters_per_interval: int
    init: Any
    run: Any
    train: Any


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


def advantages(
    reward: jax.Array,
    done: jax.Array,
    value: jax.Array,
    last_value: jax.Array,
    gamma: float,
    gae_lambda: float,
) -> jax.Array:
    """GAE advantages (Schulman et al. 2016) of a ``[time, envs]`` rollout
    (:func:`emrakul.lab.meta.ppo.gae`, on rlax).

    ``done[t]`` ends the episode after step ``t`` (no bootstrapping across it; gymnax resets
    automatically, so truncation is treated as termination, as in PureJaxRL); ``last_value`` is
    the value of the observation after the last step.
    """
    discount = gamma * (1.0 - done.astype(jnp.float32))
    return ppo.gae(reward, value, discount, gae_lambda, bootstrap_value=last_value)[0]


def make_network(config: PPOHostConfig, num_actions: int) -> nn.Module:
    """The actor-critic for ``config.env_name`` (MinAtar torso or MLPs)."""
    if config.env_name.endswith("-MinAtar"):
        return MinAtarActorCritic(num_actions, config.width, config.pooling)
    return MLPActorCritic(num_actions, tuple(config.mlp_hidden))


def make_ppo(config: PPOHostConfig, controller: str | ctl.Controller | None = None) -> PPOHost:
    """Builds the PPO host program (validated first).

    Args:
      config: a :class:`PPOHostConfig`.
      controller: a controller name (default ``config.controller``; ``gmp`` takes
        ``prune_start``/``prune_end``) or a :class:`~emrakul.controllers.Controller`.

    Returns:
      A :class:`PPOHost`: ``init(key)``, ``run(state, num_intervals)`` and ``train(key)``.
    """
    if isinstance(controller, str):
        config = config._replace(controller=controller)
    validate(config)
    if isinstance(controller, ctl.Controller):
        controller_obj = controller
    elif config.controller == "gmp":
        controller_obj = ctl.make("gmp", start=config.prune_start, end=config.prune_end)
    else:
        controller_obj = ctl.make(config.controller)
    env, env_params = gymnax.make(config.env_name)
    num_actions = int(env.action_space(env_params).n)
    network = make_network(config, num_actions)
    n, t = config.num_envs, config.num_steps
    per_iter = config.epochs * config.num_minibatches
    iters_per_interval = config.every // per_iter
    num_iters = config.total_env_steps // (n * t)
    num_intervals = num_iters // iters_per_interval
    tx = wrap_mod.wrap(
        optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr)),
        controller_obj,
        total_steps=num_intervals * config.every,
        sparsity=config.sparsity,
        distribution=config.distribution,
        every=config.every,
        seed=config.seed,
    )
    obs_shape = tuple(env.observation_space(env_params).shape)

    def init(key: jax.Array) -> PPOHostState:
        k_params, k_env, key = jax.random.split(key, 3)
        params = network.init(k_params, jnp.zeros((1, *obs_shape)))["params"]
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_env, n), env_params
        )
        return PPOHostState(params, tx.init(params), env_state, obs, jnp.zeros((n,)), key,
                            jnp.int32(0))  # fmt: skip

    def rollout_step(carry, _):
        state, ret_sum, episodes = carry
        key, k_act, k_env = jax.random.split(state.key, 3)
        logits, value = network.apply(
            {"params": wrap_mod.masked(state.params, state.opt_state)}, state.obs
        )
        action = jax.random.categorical(k_act, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], 1)[:, 0]
        obs, env_state, reward, _, done, _ = step_envs(
            env, env_params, jax.random.split(k_env, n), state.env_state, action
        )
        ret = state.episode_return + reward
        ret_sum = ret_sum + jnp.sum(jnp.where(done, ret, 0.0))
        episodes = episodes + jnp.sum(done)
        transition = (state.obs, action, log_prob, value, reward, done.astype(jnp.float32))
        state = state._replace(
            env_state=env_state, obs=obs, episode_return=jnp.where(done, 0.0, ret), key=key
        )
        return (state, ret_sum, episodes), transition

    def loss_fn(params, opt_state, mb):
        obs, action, old_lp, adv, target = mb
        logits, value = network.apply({"params": wrap_mod.masked(params, opt_state)}, obs)
        log_probs = jax.nn.log_softmax(logits)
        lp = jnp.take_along_axis(log_probs, action[:, None], 1)[:, 0]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = rlax.clipped_surrogate_pg_loss(jnp.exp(lp - old_lp), adv, config.clip_eps)
        v_loss = 0.5 * jnp.mean((value - target) ** 2)
        entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
        total = pg + config.vf_coef * v_loss - config.ent_coef * entropy
        return total, (pg, v_loss, entropy)

    def sgd(carry, mb, surgery: bool):
        params, opt_state = carry
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, opt_state, mb)
        updates, opt_state = tx.update(grads, opt_state, params, surgery=surgery, value=loss)
        return (optax.apply_updates(params, updates), opt_state), jnp.stack(aux)

    def iteration(carry, surgery: bool):
        state, ret_sum, episodes = carry
        (state, ret_sum, episodes), traj = jax.lax.scan(
            rollout_step, (state, ret_sum, episodes), None, t
        )
        obs, action, log_prob, value, reward, done = traj  # [t, n, ...]
        _, last_value = network.apply(
            {"params": wrap_mod.masked(state.params, state.opt_state)}, state.obs
        )
        adv = advantages(reward, done, value, last_value, config.gamma, config.gae_lambda)
        target = adv + value
        data = jax.tree.map(
            lambda x: x.reshape(n * t, *x.shape[2:]), (obs, action, log_prob, adv, target)
        )
        key, k_perm = jax.random.split(state.key)
        perms = jax.vmap(lambda k: jax.random.permutation(k, n * t))(
            jax.random.split(k_perm, config.epochs)
        )
        mbs = jax.tree.map(lambda x: x[perms.reshape(-1)].reshape(per_iter, -1, *x.shape[1:]), data)
        carry = (state.params, state.opt_state)
        if surgery:
            first = jax.tree.map(lambda x: x[0], mbs)
            carry, aux0 = sgd(carry, first, True)
            rest = jax.tree.map(lambda x: x[1:], mbs)
            carry, aux = jax.lax.scan(lambda c, mb: sgd(c, mb, False), carry, rest)
            aux = jnp.concatenate([aux0[None], aux], axis=0)
        else:
            carry, aux = jax.lax.scan(lambda c, mb: sgd(c, mb, False), carry, mbs)
        params, opt_state = carry
        state = state._replace(params=params, opt_state=opt_state, key=key)
        return (state, ret_sum, episodes), aux.mean(0)

    def interval(state: PPOHostState, _) -> tuple[PPOHostState, PPOHostMetrics]:
        carry = (state, jnp.float32(0.0), jnp.int32(0))
        carry, aux0 = iteration(carry, True)
        if iters_per_interval > 1:
            carry, aux = jax.lax.scan(
                lambda c, _: iteration(c, False), carry, None, iters_per_interval - 1
            )
            aux = (aux0 + aux.sum(0)) / iters_per_interval
        else:
            aux = aux0
        state, ret_sum, episodes = carry
        state = state._replace(interval=state.interval + 1)
        metrics = PPOHostMetrics(
            env_steps=state.interval * iters_per_interval * n * t,
            mean_return=jnp.where(episodes > 0, ret_sum / jnp.maximum(episodes, 1), jnp.nan),
            episodes=episodes,
            policy_loss=aux[0],
            value_loss=aux[1],
            entropy=aux[2],
            sparsity=wrap_mod.sparsity(state.opt_state),
        )
        return state, metrics

    def run(state: PPOHostState, num: int) -> tuple[PPOHostState, PPOHostMetrics]:
        return jax.lax.scan(interval, state, None, num)

    def train(key: jax.Array) -> tuple[PPOHostState, PPOHostMetrics]:
        return run(init(key), num_intervals)

    return PPOHost(config, num_intervals, iters_per_interval, init, run, train)
