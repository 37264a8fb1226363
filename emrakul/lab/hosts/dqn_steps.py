"""One DQN step of acting and one of learning (Mnih et al. 2015, "Human-level control through
deep reinforcement learning"), as pure functions of the program's :class:`Setup` and state.

Acting is ε-greedy with the masked online weights (:func:`emrakul.masked`) on vectorised gymnax
environments, storing every transition in the replay buffer (:mod:`emrakul.lab.hosts.replay`);
learning is one Adam step (through :func:`emrakul.wrap`) on the Huber loss of one-step
Q-learning TD errors (``rlax.q_learning``, ``rlax.huber_loss``) of a replayed batch against the
target network.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import rlax

from emrakul import wrapper as wrap_mod
from emrakul.lab.hosts import replay
from emrakul.lab.hosts.dqn_config import DQNConfig, is_minatar, linear_epsilon
from emrakul.lab.hosts.envs import step_envs


class Transition(NamedTuple):
    """One stored transition; ``discount`` is ``1 - terminated`` (truncation bootstraps)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    discount: jax.Array
    next_obs: jax.Array


class DQNState(NamedTuple):
    """Everything the DQN program carries.

    Attributes:
      params: the online network's dense parameters.
      target_params: the target network (a copy of the masked online weights).
      opt_state: the :func:`emrakul.wrap` state (Adam, lifecycle, controller, step).
      buffer: the :class:`~emrakul.lab.hosts.replay.ReplayState`.
      env_state: the ``num_envs`` gymnax environment states.
      obs: float32/uint8 [num_envs, ...], the current observations.
      episode_return: float32 [num_envs], return of each environment's episode so far.
      key: PRNG key.
      env_steps: int32, environment steps taken (all environments, warm-up included).
      updates: int32, gradient updates taken.
    """

    params: Any
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayState
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    key: jax.Array
    env_steps: jax.Array
    updates: jax.Array


class DQNMetrics(NamedTuple):
    """Metrics reduced inside the scan, one row per surgery interval (``prune_every`` updates).

    ``mean_return`` is ``return_sum / episodes`` (NaN when no episode ended in the interval);
    to report a chunk of rows, divide the summed ``return_sum`` by the summed ``episodes``.

    With ``make_dqn(..., probe_cut=P)``, ``cut_loss_before`` and ``cut_loss_after`` are the
    :func:`probe <DQN>` loss of one batch of ``P`` replayed transitions with the masked online
    weights right before and right after the interval's surgery update (the same batch, so
    their difference is the damage of the cut plus one Adam step); ``None`` otherwise.
    """

    updates: jax.Array
    env_steps: jax.Array
    loss: jax.Array
    return_sum: jax.Array
    episodes: jax.Array
    mean_return: jax.Array
    epsilon: jax.Array
    sparsity: jax.Array
    cut_loss_before: Any = None
    cut_loss_after: Any = None


class _Acc(NamedTuple):
    """Sums carried through an interval's scans."""

    loss_sum: jax.Array
    return_sum: jax.Array
    episodes: jax.Array
    cut: Any = None  # (probe loss before, after) the surgery, with ``probe_cut``


def _zero_acc(probe: bool = False) -> _Acc:
    cut = (jnp.float32(0.0), jnp.float32(0.0)) if probe else None
    return _Acc(jnp.float32(0.0), jnp.float32(0.0), jnp.int32(0), cut)


class Setup(NamedTuple):
    """The static parts of one DQN program (closed over, never traced)."""

    config: DQNConfig
    network: nn.Module
    env: Any
    env_params: Any
    tx: optax.GradientTransformationExtraArgs
    num_actions: int
    obs_shape: tuple[int, ...]
    obs_dtype: Any
    probe_cut: int  # replayed transitions of the cut probe (0: no probe)
    env_steps_per_iter: int  # vectorised environment steps per iteration
    updates_per_iter: int
    iters_per_block: int
    blocks_per_interval: int
    warmup_vec_steps: int


def td_loss(
    q_tm1: jax.Array,
    a_tm1: jax.Array,
    r_t: jax.Array,
    discount_t: jax.Array,
    q_t: jax.Array,
    huber_delta: float = 1.0,
) -> jax.Array:
    """Mean Huber loss of one-step Q-learning TD errors (Mnih et al. 2015).

    ``td = r_t + discount_t * max_a q_t[a] - q_tm1[a_tm1]`` (``rlax.q_learning``, the target
    under ``stop_gradient``), loss ``= mean(rlax.huber_loss(td, huber_delta))``.

    Args:
      q_tm1: float [B, A], online Q-values at the sampled states.
      a_tm1: int [B], the actions taken.
      r_t: float [B], rewards.
      discount_t: float [B], ``gamma * (1 - terminated)``.
      q_t: float [B, A], target-network Q-values at the next states.
      huber_delta: Huber threshold.

    Returns:
      float32 scalar.
    """
    if q_tm1.ndim != 2 or q_t.shape != q_tm1.shape:
        raise ValueError(f"q_tm1 and q_t must be [B, A] alike, got {q_tm1.shape}, {q_t.shape}")
    b = q_tm1.shape[0]
    for name, x in (("a_tm1", a_tm1), ("r_t", r_t), ("discount_t", discount_t)):
        if jnp.shape(x) != (b,):
            raise ValueError(f"{name} must have shape ({b},), got {jnp.shape(x)}")
    td = jax.vmap(rlax.q_learning)(q_tm1, a_tm1, r_t, discount_t, q_t)
    return jnp.mean(rlax.huber_loss(td, huber_delta))


def q_values(setup: Setup, weights, obs: jax.Array) -> jax.Array:
    """Q-values ``[batch, actions]`` of ``obs`` (``[batch, *obs_shape]``)."""
    if not is_minatar(setup.config.env_name):  # the MLP reads flat vectors
        obs = obs.reshape(obs.shape[0], -1)
    return setup.network.apply({"params": weights}, obs.astype(jnp.float32))


def act(setup: Setup, state: DQNState, key: jax.Array, epsilon, random_only: bool) -> jax.Array:
    """ε-greedy actions of the masked online network (uniform ones with ``random_only``)."""
    n = setup.config.num_envs
    k_explore, k_random = jax.random.split(key)
    random_action = jax.random.randint(k_random, (n,), 0, setup.num_actions)
    if random_only:
        return random_action
    weights = wrap_mod.masked(state.params, state.opt_state)
    greedy = jnp.argmax(q_values(setup, weights, state.obs), axis=-1)
    explore = jax.random.uniform(k_explore, (n,)) < epsilon
    return jnp.where(explore, random_action, greedy).astype(jnp.int32)


def env_step(setup: Setup, carry: tuple[DQNState, _Acc], random_only: bool):
    """One vectorised step of acting, storing its transitions and counting finished episodes."""
    state, acc = carry
    config, n = setup.config, setup.config.num_envs
    key, k_act, k_env = jax.random.split(state.key, 3)
    action = act(setup, state, k_act, linear_epsilon(config, state.env_steps), random_only)
    obs, env_state, reward, terminated, done, final_obs = step_envs(
        setup.env, setup.env_params, jax.random.split(k_env, n), state.env_state, action
    )
    transition = Transition(
        obs=state.obs.astype(setup.obs_dtype),
        action=action.astype(jnp.int32),
        reward=reward,
        discount=1.0 - terminated.astype(jnp.float32),
        next_obs=final_obs.astype(setup.obs_dtype),
    )
    ret = state.episode_return + reward
    acc = acc._replace(
        return_sum=acc.return_sum + jnp.sum(jnp.where(done, ret, 0.0)),
        episodes=acc.episodes + jnp.sum(done).astype(jnp.int32),
    )
    state = state._replace(
        buffer=replay.add(state.buffer, transition),
        env_state=env_state,
        obs=obs,
        episode_return=jnp.where(done, 0.0, ret),
        key=key,
        env_steps=state.env_steps + n,
    )
    return state, acc


def _batch_td_loss(setup: Setup, online, target, batch: Transition) -> jax.Array:
    q_tm1 = q_values(setup, online, batch.obs)
    q_t = q_values(setup, target, batch.next_obs)
    discount = setup.config.gamma * batch.discount
    return td_loss(q_tm1, batch.action, batch.reward, discount, q_t, setup.config.huber_delta)


def probe_loss(setup: Setup, weights, buffer: replay.ReplayState, key: jax.Array, size: int):
    """The TD loss of ``weights`` on ``size`` transitions replayed with ``key``, with ``weights``
    as their own target network (what the loss is right after a target copy), so that it
    depends on nothing but the weights and the batch."""
    return _batch_td_loss(setup, weights, weights, replay.sample(buffer, key, size))


def update(setup: Setup, carry: tuple[DQNState, _Acc], surgery: bool):
    """One gradient update on a replayed batch (the surgery's, when ``surgery``)."""
    state, acc = carry
    key, k_sample = jax.random.split(state.key)
    batch = replay.sample(state.buffer, k_sample, setup.config.batch_size)

    def loss_fn(params):
        online = wrap_mod.masked(params, state.opt_state)
        return _batch_td_loss(setup, online, state.target_params, batch)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = setup.tx.update(
        grads, state.opt_state, state.params, surgery=surgery, value=loss
    )  # the loss feeds the wrapper's health EMAs (observed by the learned controller)
    params = optax.apply_updates(state.params, updates)
    if surgery and setup.probe_cut:  # a key folded off the stream: the run's keys are unchanged
        k_probe = jax.random.fold_in(state.key, 0x5CA1)
        before = wrap_mod.masked(state.params, state.opt_state)
        after = wrap_mod.masked(params, opt_state)
        acc = acc._replace(
            cut=tuple(
                probe_loss(setup, w, state.buffer, k_probe, setup.probe_cut)
                for w in (before, after)
            )
        )
    state = state._replace(params=params, opt_state=opt_state, key=key, updates=state.updates + 1)
    return state, acc._replace(loss_sum=acc.loss_sum + loss)
