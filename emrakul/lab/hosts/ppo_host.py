"""A PPO host on gymnax environments, pruned while it learns.

PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms") with GAE (Schulman et
al. 2016) from rlax, written as one compiled program in the PureJaxRL style (Lu et al. 2022,
"Discovered Policy Optimisation"): vectorised gymnax environments, a rollout of ``num_steps``
steps per environment, then ``epochs`` passes of ``num_minibatches`` minibatch updates, all inside
``lax.scan``; it vmaps over seeds (``jax.jit(jax.vmap(ppo.train))(keys)``), and
``PPOHost.program`` is the same program for :mod:`emrakul.lab.driver`.

The optimizer is ``emrakul.wrap`` around Adam (gradients clipped by global norm first,
:func:`emrakul.lab.build.wrapped_adam`), so any controller prunes the actor-critic exactly as it
prunes the classifiers; the policy acts and learns with the masked weights
(:func:`emrakul.masked`). A surgery interval is ``every // (epochs * num_minibatches)`` PPO
iterations, and the surgery is the first minibatch update of the interval's first iteration (a
static position: no ``lax.cond`` on a counter that ``vmap`` would turn into both branches).

Networks (:mod:`emrakul.lab.hosts.rl_nets`): for ``*-MinAtar`` games, MinAtar's torso with a
policy and a value head; otherwise separate tanh MLPs for the actor and the critic (PureJaxRL's
CartPole network). Initialisers are LeCun-normal (no orthogonal init: its QR deadlocks XLA:CPU
inside ``jit(vmap)``), with the policy head scaled by 0.01 so that the initial policy is near
uniform. Metrics (mean return of the episodes completed in an interval, losses, sparsity) are
reduced inside the scan; nothing per-step leaves it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import rlax

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod
from emrakul.lab.build import make_controller, schedule_kwargs, wrapped_adam
from emrakul.lab.hosts.envs import step_envs
from emrakul.lab.hosts.ppo_config import PPOHostConfig, validate
from emrakul.lab.hosts.rl_nets import MinAtarActorCritic, MLPActorCritic
from emrakul.lab.meta import ppo
from emrakul.lab.program import Program

__all__ = [
    "MLPActorCritic",
    "MinAtarActorCritic",
    "PPOHost",
    "PPOHostConfig",
    "PPOHostMetrics",
    "PPOHostState",
    "advantages",
    "make_network",
    "make_ppo",
    "validate",
]


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
    """The compiled pieces of a PPO host run (see the module docstring)."""

    config: PPOHostConfig
    num_intervals: int
    iters_per_interval: int
    init: Any
    run: Any
    train: Any
    program: Program | None = None  # the same program for :mod:`emrakul.lab.driver`


class Setup(NamedTuple):
    """The static parts of one PPO host program (closed over, never traced)."""

    config: PPOHostConfig
    network: nn.Module
    env: Any
    env_params: Any
    tx: optax.GradientTransformationExtraArgs
    obs_shape: tuple[int, ...]
    iters_per_interval: int


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


def _policy(setup: Setup, params, opt_state, obs: jax.Array):
    """Policy logits and values of the masked weights."""
    return setup.network.apply({"params": wrap_mod.masked(params, opt_state)}, obs)


def init(setup: Setup, key: jax.Array) -> PPOHostState:
    """Params, the wrapped optimizer and ``num_envs`` reset environments."""
    n = setup.config.num_envs
    k_params, k_env, key = jax.random.split(key, 3)
    params = setup.network.init(k_params, jnp.zeros((1, *setup.obs_shape)))["params"]
    obs, env_state = jax.vmap(setup.env.reset, in_axes=(0, None))(
        jax.random.split(k_env, n), setup.env_params
    )
    return PPOHostState(params, setup.tx.init(params), env_state, obs, jnp.zeros((n,)), key,
                        jnp.int32(0))  # fmt: skip


def rollout_step(setup: Setup, carry, _=None):
    """One vectorised step of sampling the policy; returns the transition for the rollout."""
    state, ret_sum, episodes = carry
    key, k_act, k_env = jax.random.split(state.key, 3)
    logits, value = _policy(setup, state.params, state.opt_state, state.obs)
    action = jax.random.categorical(k_act, logits)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], 1)[:, 0]
    obs, env_state, reward, _, done, _ = step_envs(
        setup.env, setup.env_params, jax.random.split(k_env, setup.config.num_envs),
        state.env_state, action,
    )  # fmt: skip
    ret = state.episode_return + reward
    ret_sum = ret_sum + jnp.sum(jnp.where(done, ret, 0.0))
    episodes = episodes + jnp.sum(done)
    transition = (state.obs, action, log_prob, value, reward, done.astype(jnp.float32))
    state = state._replace(
        env_state=env_state, obs=obs, episode_return=jnp.where(done, 0.0, ret), key=key
    )
    return (state, ret_sum, episodes), transition


def loss_fn(setup: Setup, params, opt_state, mb):
    """PPO-clip's loss of a minibatch: clipped surrogate + value loss - entropy bonus."""
    config = setup.config
    obs, action, old_lp, adv, target = mb
    logits, value = _policy(setup, params, opt_state, obs)
    log_probs = jax.nn.log_softmax(logits)
    lp = jnp.take_along_axis(log_probs, action[:, None], 1)[:, 0]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg = rlax.clipped_surrogate_pg_loss(jnp.exp(lp - old_lp), adv, config.clip_eps)
    v_loss = 0.5 * jnp.mean((value - target) ** 2)
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
    total = pg + config.vf_coef * v_loss - config.ent_coef * entropy
    return total, (pg, v_loss, entropy)


def sgd(setup: Setup, carry, mb, surgery: bool):
    """One minibatch update through the wrapped optimizer (the surgery's, when ``surgery``)."""
    params, opt_state = carry
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, setup), has_aux=True)
    (loss, aux), grads = grad_fn(params, opt_state, mb)
    updates, opt_state = setup.tx.update(grads, opt_state, params, surgery=surgery, value=loss)
    return (optax.apply_updates(params, updates), opt_state), jnp.stack(aux)


def _minibatches(setup: Setup, state: PPOHostState, traj):
    """GAE targets of a rollout, shuffled into ``epochs * num_minibatches`` minibatches."""
    config = setup.config
    n, t = config.num_envs, config.num_steps
    obs, action, log_prob, value, reward, done = traj  # [t, n, ...]
    _, last_value = _policy(setup, state.params, state.opt_state, state.obs)
    adv = advantages(reward, done, value, last_value, config.gamma, config.gae_lambda)
    target = adv + value
    data = jax.tree.map(
        lambda x: x.reshape(n * t, *x.shape[2:]), (obs, action, log_prob, adv, target)
    )
    key, k_perm = jax.random.split(state.key)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n * t))(
        jax.random.split(k_perm, config.epochs)
    )
    per_iter = config.epochs * config.num_minibatches
    mbs = jax.tree.map(lambda x: x[perms.reshape(-1)].reshape(per_iter, -1, *x.shape[1:]), data)
    return mbs, key


def iteration(setup: Setup, carry, surgery: bool):
    """A rollout, then ``epochs * num_minibatches`` updates (the first one the surgery's)."""
    step = functools.partial(rollout_step, setup)
    (state, ret_sum, episodes), traj = jax.lax.scan(step, carry, None, setup.config.num_steps)
    mbs, key = _minibatches(setup, state, traj)
    carry = (state.params, state.opt_state)
    plain = lambda c, mb: sgd(setup, c, mb, False)
    if surgery:
        carry, aux0 = sgd(setup, carry, jax.tree.map(lambda x: x[0], mbs), True)
        carry, aux = jax.lax.scan(plain, carry, jax.tree.map(lambda x: x[1:], mbs))
        aux = jnp.concatenate([aux0[None], aux], axis=0)
    else:
        carry, aux = jax.lax.scan(plain, carry, mbs)
    params, opt_state = carry
    state = state._replace(params=params, opt_state=opt_state, key=key)
    return (state, ret_sum, episodes), aux.mean(0)


def interval(setup: Setup, state: PPOHostState, _=None) -> tuple[PPOHostState, PPOHostMetrics]:
    """One surgery interval of ``iters_per_interval`` PPO iterations."""
    k, n, t = setup.iters_per_interval, setup.config.num_envs, setup.config.num_steps
    carry = (state, jnp.float32(0.0), jnp.int32(0))
    carry, aux0 = iteration(setup, carry, True)
    if k > 1:
        carry, aux = jax.lax.scan(lambda c, _: iteration(setup, c, False), carry, None, k - 1)
        aux = (aux0 + aux.sum(0)) / k
    else:
        aux = aux0
    state, ret_sum, episodes = carry
    state = state._replace(interval=state.interval + 1)
    metrics = PPOHostMetrics(
        env_steps=state.interval * k * n * t,
        mean_return=jnp.where(episodes > 0, ret_sum / jnp.maximum(episodes, 1), jnp.nan),
        episodes=episodes,
        policy_loss=aux[0],
        value_loss=aux[1],
        entropy=aux[2],
        sparsity=wrap_mod.sparsity(state.opt_state),
    )
    return state, metrics


def run(setup: Setup, state: PPOHostState, num: int) -> tuple[PPOHostState, PPOHostMetrics]:
    """``num`` surgery intervals (one ``lax.scan``)."""
    return jax.lax.scan(functools.partial(interval, setup), state, None, num)


def train(setup: Setup, num_intervals: int, key: jax.Array):
    """``init`` then every interval of the run."""
    return run(setup, init(setup, key), num_intervals)


def describe(metrics: PPOHostMetrics) -> str:
    """A chunk's progress fields: environment steps, the mean return of its episodes, sparsity."""
    episodes = int(np.sum(metrics.episodes))
    finite = np.nan_to_num(metrics.mean_return) * metrics.episodes
    ret = float(np.sum(finite)) / episodes if episodes else math.nan
    return (
        f"env steps {int(metrics.env_steps[0, -1]):,} | return {ret:.2f} ({episodes} episodes) "
        f"| sparsity {max(0.0, float(np.mean(metrics.sparsity[:, -1]))):.3f}"
    )


def _final(state: PPOHostState) -> dict[str, jax.Array]:
    return {"intervals": state.interval, "sparsity": wrap_mod.sparsity(state.opt_state)}


def make_ppo(config: PPOHostConfig, controller: str | ctl.Controller | None = None) -> PPOHost:
    """Builds the PPO host program (validated first).

    Args:
      config: a :class:`PPOHostConfig`.
      controller: a controller name (default ``config.controller``; built with the config's
        schedule, :func:`emrakul.lab.build.schedule_kwargs`) or a
        :class:`~emrakul.controllers.Controller`.

    Returns:
      A :class:`PPOHost`: ``init(key)``, ``run(state, num_intervals)``, ``train(key)`` and the
      :class:`~emrakul.lab.program.Program`.

    Raises:
      ValueError: an invalid config, naming the field.
    """
    if isinstance(controller, str):
        config = config._replace(controller=controller)
    validate(config)
    if not isinstance(controller, ctl.Controller):
        controller = config.controller
    env, env_params = gymnax.make(config.env_name)
    n, t = config.num_envs, config.num_steps
    iters_per_interval = config.every // (config.epochs * config.num_minibatches)
    num_intervals = config.total_env_steps // (n * t) // iters_per_interval
    tx = wrapped_adam(
        make_controller(controller, schedule_kwargs(config.prune_start, config.prune_end)),
        lr=config.lr,
        max_grad_norm=config.max_grad_norm,
        total_steps=num_intervals * config.every,
        sparsity=config.sparsity,
        distribution=config.distribution,
        every=config.every,
        seed=config.seed,
    )
    network = make_network(config, int(env.action_space(env_params).n))
    obs_shape = tuple(env.observation_space(env_params).shape)
    setup = Setup(config, network, env, env_params, tx, obs_shape, iters_per_interval)
    part = functools.partial
    program = Program(
        init=part(init, setup),
        run=part(run, setup),
        num_intervals=num_intervals,
        metrics_type=PPOHostMetrics,
        loss_field="value_loss",
        loss_name="value loss",
        remedy="Lower PPOHostConfig.lr.",
        final=_final,
        describe=describe,
    )
    return PPOHost(config, num_intervals, iters_per_interval, program.init, program.run,
                   part(train, setup, num_intervals), program)  # fmt: skip
