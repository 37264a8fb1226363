"""DQN on gymnax environments (MinAtar, CartPole) as one compiled program, pruned while it learns.

Deep Q-learning (Mnih et al. 2015, "Human-level control through deep reinforcement learning"):
ε-greedy acting on vectorised gymnax environments, a uniform replay buffer
(:mod:`emrakul.lab.hosts.replay`), one-step Q-learning targets from a periodically copied target
network (``rlax.q_learning``) and the Huber loss (``rlax.huber_loss``), Adam. The Q-network is
MinAtar's CNN (Young & Tian 2019, :class:`~emrakul.lab.hosts.rl_nets.MinAtarQNetwork`) for
``*-MinAtar`` environments and an MLP otherwise. Adam is wrapped with :func:`emrakul.wrap` for
every controller, the dense baseline included, so dense and pruned runs execute the same program;
the pruning defaults (95% sparsity, ERK, gradual magnitude pruning from 20% to 80% of training,
a surgery every 1000 updates) are those of Obando-Ceron et al. 2024, "In value-based deep
reinforcement learning, a pruned network is a good network". Acting, the TD targets and the
loss all use the masked online weights (``emrakul.masked``); the target network is a copy of the
*masked* online weights, so it is as sparse as the online network.

Units. ``train_every`` counts environment steps over all environments: one gradient update per
``train_every`` environment transitions. ``target_update_every`` and ``prune_every`` count
gradient updates; ``learning_starts``, ``total_env_steps`` and the ε schedule count environment
steps.

Program structure (``make_dqn(config) -> DQN``; PureJaxRL-style, every piece a pure function of
one :class:`DQNState`, so ``jax.jit(jax.vmap(dqn.train))(keys)`` trains several seeds at once):

* ``init(key)``: params, the wrapped optimizer, the buffer, ``num_envs`` reset environments,
  then ``ceil(learning_starts / num_envs)`` vectorised steps of uniformly random actions that
  fill the buffer (a ``lax.scan``), so that learning can start without any branch.
* an *iteration* is ``max(1, train_every // num_envs)`` vectorised environment steps followed by
  ``max(1, num_envs // train_every)`` updates (``train_every`` and ``num_envs`` must divide one
  another), so the update frequency is part of the scan's shape, never a ``lax.cond`` on a step
  counter that ``vmap`` would batch into a select executing both branches.
* a *block* is ``gcd(prune_every, target_update_every)`` updates: the target network is copied
  at the start of a block when the update count is a multiple of ``target_update_every`` (a
  ``jnp.where`` once per block, not per update).
* an *interval* is ``prune_every`` updates (a row of metrics); its first update performs the
  surgery (``tx.update(..., surgery=True)``) and the others do not, as in :mod:`emrakul.lab.loop`.
* ``run(state, num_intervals)``: a ``lax.scan`` over intervals, so a Python driver can run the
  same compiled chunk repeatedly; ``train(key)`` is ``init`` then ``run`` over every interval.

Metrics are reduced inside the scans (sums carried through the scan; nothing per step, and in
particular not gymnax's per-step ``info``, is stacked out): per interval, the mean TD loss, the
sum and count of the returns of episodes that ended during the interval (a running return is
kept per environment), ε and the sparsity.
"""

from __future__ import annotations

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
from emrakul.lab.hosts import replay
from emrakul.lab.hosts.rl_nets import POOLINGS, MinAtarQNetwork, MLPQNetwork
from emrakul.surgery.budgets import DISTRIBUTIONS


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
    mlp_hidden: tuple[int, ...] = (64, 64)
    controller: str = "dense"
    sparsity: float = 0.95
    distribution: str = "erk"
    prune_start: float = 0.2
    prune_end: float = 0.8
    prune_every: int = 1000


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


class DQN(NamedTuple):
    """The compiled pieces of a DQN experiment (see the module docstring)."""

    config: DQNConfig
    network: nn.Module
    env: Any
    env_params: Any
    tx: optax.GradientTransformationExtraArgs
    num_intervals: int
    updates_per_interval: int
    env_steps_per_update: int
    warmup_env_steps: int
    init: Any
    run: Any
    train: Any
    evaluate: Any
    probe_loss: Any = None


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


def make_network(config: DQNConfig, num_actions: int) -> nn.Module:
    """MinAtar's CNN for ``*-MinAtar`` environments, the MLP otherwise."""
    if is_minatar(config.env_name):
        return MinAtarQNetwork(num_actions, width=config.width, pooling=config.pooling)
    return MLPQNetwork(num_actions, hidden=tuple(config.mlp_hidden))


def step_envs(env, env_params, keys, env_state, action):
    """Vectorised gymnax step (``keys`` and ``action`` batched over environments); returns
    obs, state, reward (float32), terminated, done (terminated or truncated) and the final
    observation of finished episodes (gymnax 1.0's ``info["final_observation"]``)."""
    out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, env_state, action, env_params)
    if len(out) == 6:  # gymnax >= 1.0: obs, state, reward, terminated, truncated, info
        obs, env_state, reward, terminated, truncated, info = out
        done = terminated | truncated
    else:  # older gymnax: obs, state, reward, done, info
        obs, env_state, reward, done, info = out
        terminated = done
    final_obs = info.get("final_observation", obs)
    return obs, env_state, reward.astype(jnp.float32), terminated, done, final_obs


def make_dqn(
    config: DQNConfig, controller: str | ctl.Controller | None = None, *, probe_cut: int = 0
) -> DQN:
    """Builds the DQN program for ``config`` (validated before anything is traced).

    Args:
      config: a :class:`DQNConfig`.
      controller: a controller name (default ``config.controller``; ``"gmp"`` is built with
        ``prune_start``/``prune_end``, the others with their defaults) or a
        :class:`~emrakul.controllers.Controller` object.
      probe_cut: when positive, every surgery update also measures ``probe_loss`` on that many
        replayed transitions before and after the cut (``DQNMetrics.cut_loss_before`` /
        ``cut_loss_after``; used by :class:`emrakul.lab.meta.rl_env.DQNSurgeryEnv`). The probe
        uses a
        key folded from the state's key, so the run itself is unchanged.

    Returns:
      A :class:`DQN`.

    Raises:
      ValueError: an invalid config (naming the field) or controller name.
    """
    if isinstance(controller, str) or controller is None:
        config = config._replace(controller=controller or config.controller)
    validate(config)
    if probe_cut < 0:
        raise ValueError(f"probe_cut must be >= 0, got {probe_cut}")
    probe = probe_cut > 0
    if isinstance(controller, ctl.Controller):
        controller_obj = controller
    elif config.controller == "gmp":
        controller_obj = ctl.make("gmp", start=config.prune_start, end=config.prune_end)
    else:
        controller_obj = ctl.make(config.controller)
    env, env_params = gymnax.make(config.env_name)
    space = env.action_space(env_params)
    if not hasattr(space, "n"):
        raise ValueError(
            f"config.env_name={config.env_name!r} has a continuous action space; DQN needs "
            "discrete actions"
        )
    num_actions = int(space.n)
    network = make_network(config, num_actions)
    n = config.num_envs
    env_steps_per_iter = max(1, config.train_every // n)  # vectorised steps per iteration
    updates_per_iter = max(1, n // config.train_every)
    every = config.prune_every
    block = math.gcd(every, config.target_update_every)
    iters_per_block = block // updates_per_iter
    blocks_per_interval = every // block
    num_intervals = count_intervals(config)
    total_updates = num_intervals * every
    warmup_vec_steps = _warmup_steps(config) // n
    tx = wrap_mod.wrap(
        optax.adam(config.lr, eps=config.adam_eps),
        controller_obj,
        total_steps=total_updates,
        sparsity=config.sparsity,
        distribution=config.distribution,
        every=every,
    )
    obs_dtype = jnp.uint8 if is_minatar(config.env_name) else jnp.float32
    obs_shape = tuple(env.observation_space(env_params).shape)

    def q_values(weights, obs):  # obs: [batch, *obs_shape]
        if not is_minatar(config.env_name):  # the MLP reads flat vectors
            obs = obs.reshape(obs.shape[0], -1)
        return network.apply({"params": weights}, obs.astype(jnp.float32))

    def act(state: DQNState, key, epsilon, random_only: bool):
        k_explore, k_random = jax.random.split(key)
        random_action = jax.random.randint(k_random, (n,), 0, num_actions)
        if random_only:
            return random_action
        weights = wrap_mod.masked(state.params, state.opt_state)
        greedy = jnp.argmax(q_values(weights, state.obs), axis=-1)
        explore = jax.random.uniform(k_explore, (n,)) < epsilon
        return jnp.where(explore, random_action, greedy).astype(jnp.int32)

    def env_step(carry, random_only: bool):
        state, acc = carry
        key, k_act, k_env = jax.random.split(state.key, 3)
        action = act(state, k_act, linear_epsilon(config, state.env_steps), random_only)
        obs, env_state, reward, terminated, done, final_obs = step_envs(
            env, env_params, jax.random.split(k_env, n), state.env_state, action
        )
        transition = Transition(
            obs=state.obs.astype(obs_dtype),
            action=action.astype(jnp.int32),
            reward=reward,
            discount=1.0 - terminated.astype(jnp.float32),
            next_obs=final_obs.astype(obs_dtype),
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

    def loss_fn(params, opt_state, target_params, batch: Transition):
        q_tm1 = q_values(wrap_mod.masked(params, opt_state), batch.obs)
        q_t = q_values(target_params, batch.next_obs)
        discount = config.gamma * batch.discount
        return td_loss(q_tm1, batch.action, batch.reward, discount, q_t, config.huber_delta)

    def probe_loss(weights, buffer: replay.ReplayState, key: jax.Array, size: int):
        """The TD loss of ``weights`` on ``size`` transitions replayed with ``key``, with
        ``weights`` as their own target network (what the loss is right after a target copy),
        so that it depends on nothing but the weights and the batch."""
        batch = replay.sample(buffer, key, size)
        q_tm1 = q_values(weights, batch.obs)
        q_t = q_values(weights, batch.next_obs)
        discount = config.gamma * batch.discount
        return td_loss(q_tm1, batch.action, batch.reward, discount, q_t, config.huber_delta)

    def update(carry, surgery: bool):
        state, acc = carry
        key, k_sample = jax.random.split(state.key)
        batch = replay.sample(state.buffer, k_sample, config.batch_size)
        loss, grads = jax.value_and_grad(loss_fn)(
            state.params, state.opt_state, state.target_params, batch
        )
        updates, opt_state = tx.update(
            grads, state.opt_state, state.params, surgery=surgery, value=loss
        )  # the loss feeds the wrapper's health EMAs (observed by the learned controller)
        params = optax.apply_updates(state.params, updates)
        if surgery and probe:  # a key folded off the stream: the run's own keys are unchanged
            k_probe = jax.random.fold_in(state.key, 0x5CA1)
            before = probe_loss(
                wrap_mod.masked(state.params, state.opt_state), state.buffer, k_probe, probe_cut
            )
            after = probe_loss(wrap_mod.masked(params, opt_state), state.buffer, k_probe, probe_cut)
            acc = acc._replace(cut=(before, after))
        state = state._replace(
            params=params,
            opt_state=opt_state,
            key=key,
            updates=state.updates + 1,
        )
        return state, acc._replace(loss_sum=acc.loss_sum + loss)

    def repeat(fn, carry, times: int):
        if times == 1:
            return fn(carry)
        if times > 1:
            carry, _ = jax.lax.scan(lambda c, _: (fn(c), None), carry, None, times)
        return carry

    def iteration(carry, surgery: bool):
        carry = repeat(lambda c: env_step(c, False), carry, env_steps_per_iter)
        carry = update(carry, surgery)
        return repeat(lambda c: update(c, False), carry, updates_per_iter - 1)

    def run_block(carry, first: bool):
        state, acc = carry
        sync = state.updates % config.target_update_every == 0
        online = wrap_mod.masked(state.params, state.opt_state)
        target = jax.tree.map(lambda o, t: jnp.where(sync, o, t), online, state.target_params)
        carry = (state._replace(target_params=target), acc)
        rest = iters_per_block
        if first:
            carry, rest = iteration(carry, True), rest - 1
        return repeat(lambda c: iteration(c, False), carry, rest)

    def interval(state: DQNState, _) -> tuple[DQNState, DQNMetrics]:
        carry = run_block((state, _zero_acc(probe)), True)
        state, acc = repeat(lambda c: run_block(c, False), carry, blocks_per_interval - 1)
        episodes = acc.episodes
        metrics = DQNMetrics(
            updates=state.updates,
            env_steps=state.env_steps,
            loss=acc.loss_sum / every,
            return_sum=acc.return_sum,
            episodes=episodes,
            mean_return=jnp.where(episodes > 0, acc.return_sum / jnp.maximum(episodes, 1), jnp.nan),
            epsilon=linear_epsilon(config, state.env_steps),
            sparsity=wrap_mod.sparsity(state.opt_state),
            cut_loss_before=acc.cut[0] if probe else None,
            cut_loss_after=acc.cut[1] if probe else None,
        )
        return state, metrics

    def init(key: jax.Array) -> DQNState:
        k_params, k_opt, k_env, k_run = jax.random.split(key, 4)
        dummy = jnp.zeros((1, *obs_shape), jnp.float32)
        params = network.init(k_params, dummy)["params"]
        opt_state = tx.init(params)._replace(key=k_opt)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_env, n), env_params
        )
        example = Transition(
            obs=jnp.zeros(obs_shape, obs_dtype),
            action=jnp.int32(0),
            reward=jnp.float32(0.0),
            discount=jnp.float32(0.0),
            next_obs=jnp.zeros(obs_shape, obs_dtype),
        )
        state = DQNState(
            params=params,
            target_params=wrap_mod.masked(params, opt_state),
            opt_state=opt_state,
            buffer=replay.init(config.buffer_size, example),
            env_state=env_state,
            obs=obs,
            episode_return=jnp.zeros((n,), jnp.float32),
            key=k_run,
            env_steps=jnp.int32(0),
            updates=jnp.int32(0),
        )
        state, _ = repeat(lambda c: env_step(c, True), (state, _zero_acc()), warmup_vec_steps)
        return state

    def run(state: DQNState, num_intervals: int) -> tuple[DQNState, DQNMetrics]:
        return jax.lax.scan(interval, state, None, num_intervals)

    def train(key: jax.Array) -> tuple[DQNState, DQNMetrics]:
        return run(init(key), num_intervals)

    def evaluate(
        state: DQNState, key: jax.Array, num_steps: int, epsilon: float = 0.001
    ) -> dict[str, jax.Array]:
        """Mean return of the episodes that end in ``num_steps`` vectorised steps of fresh
        environments, acting ε-greedily (small ε) with the masked online network; no learning.
        """
        k_env, k_run = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_env, n), env_params
        )
        weights = wrap_mod.masked(state.params, state.opt_state)

        def body(carry, k):
            obs, env_state, ret, total, count = carry
            k_act, k_explore, k_env = jax.random.split(k, 3)
            greedy = jnp.argmax(q_values(weights, obs), axis=-1)
            explore = jax.random.uniform(k_explore, (n,)) < epsilon
            action = jnp.where(explore, jax.random.randint(k_act, (n,), 0, num_actions), greedy)
            obs, env_state, reward, _, done, _ = step_envs(
                env, env_params, jax.random.split(k_env, n), env_state, action
            )
            ret = ret + reward
            total = total + jnp.sum(jnp.where(done, ret, 0.0))
            count = count + jnp.sum(done).astype(jnp.int32)
            return (obs, env_state, jnp.where(done, 0.0, ret), total, count), None

        init_carry = (obs, env_state, jnp.zeros((n,)), jnp.float32(0.0), jnp.int32(0))
        (_, _, _, total, count), _ = jax.lax.scan(
            body, init_carry, jax.random.split(k_run, num_steps)
        )
        mean = jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
        return {"mean_return": mean, "episodes": count}

    return DQN(
        config=config,
        network=network,
        env=env,
        env_params=env_params,
        tx=tx,
        num_intervals=num_intervals,
        updates_per_interval=every,
        env_steps_per_update=config.train_every,
        warmup_env_steps=_warmup_steps(config),
        init=init,
        run=run,
        train=train,
        evaluate=evaluate,
        probe_loss=probe_loss,
    )


def summarize(metrics: DQNMetrics) -> dict[str, float]:
    """Host-side summary of a chunk of metrics rows (one seed): the mean return of the episodes
    completed in the chunk, their count, the mean loss and the last sparsity."""
    m = jax.tree.map(np.asarray, metrics)
    episodes = int(np.sum(m.episodes))
    return {
        "mean_return": float(np.sum(m.return_sum) / episodes) if episodes else float("nan"),
        "episodes": episodes,
        "loss": float(np.mean(m.loss)),
        "sparsity": float(np.reshape(m.sparsity, -1)[-1]),
    }
