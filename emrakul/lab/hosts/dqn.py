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

Program structure (``make_dqn(config) -> DQN``; PureJaxRL-style, every piece a module-level pure
function of the static :class:`~emrakul.lab.hosts.dqn_steps.Setup` and one :class:`DQNState`, so
``jax.jit(jax.vmap(dqn.train))(keys)`` trains several seeds at once; ``DQN.program`` is the same
program as a :class:`~emrakul.lab.program.Program` for :mod:`emrakul.lab.driver`). The settings
live in :mod:`~emrakul.lab.hosts.dqn_config`, one step of acting and one of learning in
:mod:`~emrakul.lab.hosts.dqn_steps`; this module composes them into iterations, blocks and
intervals:

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

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod
from emrakul.lab.build import make_controller, schedule_kwargs, wrapped_adam
from emrakul.lab.hosts import replay
from emrakul.lab.hosts.dqn_config import (
    NETWORKS,
    DQNConfig,
    _warmup_steps,
    count_intervals,
    is_minatar,
    linear_epsilon,
    validate,
)
from emrakul.lab.hosts.dqn_steps import (
    DQNMetrics,
    DQNState,
    Setup,
    Transition,
    _zero_acc,
    act,
    env_step,
    probe_loss,
    q_values,
    td_loss,
    update,
)
from emrakul.lab.hosts.envs import step_envs
from emrakul.lab.hosts.rl_nets import ImpalaQNetwork, MinAtarQNetwork, MLPQNetwork
from emrakul.lab.program import Program

__all__ = [
    "DQN",
    "NETWORKS",
    "DQNConfig",
    "DQNMetrics",
    "DQNState",
    "Setup",
    "Transition",
    "act",
    "count_intervals",
    "env_step",
    "evaluate",
    "init",
    "interval",
    "is_minatar",
    "linear_epsilon",
    "make_dqn",
    "make_network",
    "probe_loss",
    "q_values",
    "run",
    "step_envs",
    "summarize",
    "td_loss",
    "train",
    "update",
    "validate",
]


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
    program: Program | None = None  # the same program for :mod:`emrakul.lab.driver`


def make_network(config: DQNConfig, num_actions: int) -> nn.Module:
    """MinAtar's CNN or the Impala ResNet (``config.network``) for ``*-MinAtar``
    environments, the MLP otherwise."""
    if is_minatar(config.env_name):
        net = ImpalaQNetwork if config.network == "impala" else MinAtarQNetwork
        return net(num_actions, width=config.width, pooling=config.pooling)
    return MLPQNetwork(num_actions, hidden=tuple(config.mlp_hidden))


def _repeat(fn, carry, times: int):
    """``fn`` applied ``times`` times (a ``lax.scan`` from two on)."""
    if times == 1:
        return fn(carry)
    if times > 1:
        carry, _ = jax.lax.scan(lambda c, _: (fn(c), None), carry, None, times)
    return carry


def iteration(setup: Setup, carry, surgery: bool):
    """Acting for one update's worth of environment steps, then the updates."""
    carry = _repeat(lambda c: env_step(setup, c, False), carry, setup.env_steps_per_iter)
    carry = update(setup, carry, surgery)
    return _repeat(lambda c: update(setup, c, False), carry, setup.updates_per_iter - 1)


def run_block(setup: Setup, carry, first: bool):
    """A block of iterations; the target network is synced first when the update count is a
    multiple of ``target_update_every`` (a select once per block)."""
    state, acc = carry
    sync = state.updates % setup.config.target_update_every == 0
    online = wrap_mod.masked(state.params, state.opt_state)
    target = jax.tree.map(lambda o, t: jnp.where(sync, o, t), online, state.target_params)
    carry = (state._replace(target_params=target), acc)
    rest = setup.iters_per_block
    if first:
        carry, rest = iteration(setup, carry, True), rest - 1
    return _repeat(lambda c: iteration(setup, c, False), carry, rest)


def interval(setup: Setup, state: DQNState, _=None) -> tuple[DQNState, DQNMetrics]:
    """One surgery interval (``prune_every`` updates; the first performs the surgery)."""
    probe = setup.probe_cut > 0
    carry = run_block(setup, (state, _zero_acc(probe)), True)
    state, acc = _repeat(lambda c: run_block(setup, c, False), carry, setup.blocks_per_interval - 1)
    episodes = acc.episodes
    metrics = DQNMetrics(
        updates=state.updates,
        env_steps=state.env_steps,
        loss=acc.loss_sum / setup.config.prune_every,
        return_sum=acc.return_sum,
        episodes=episodes,
        mean_return=jnp.where(episodes > 0, acc.return_sum / jnp.maximum(episodes, 1), jnp.nan),
        epsilon=linear_epsilon(setup.config, state.env_steps),
        sparsity=wrap_mod.sparsity(state.opt_state),
        cut_loss_before=acc.cut[0] if probe else None,
        cut_loss_after=acc.cut[1] if probe else None,
    )
    return state, metrics


def init(setup: Setup, key: jax.Array) -> DQNState:
    """Params, the wrapped optimizer, an empty buffer and reset environments, then the warm-up
    steps of uniformly random acting that fill the buffer."""
    n, obs_shape, obs_dtype = setup.config.num_envs, setup.obs_shape, setup.obs_dtype
    k_params, k_opt, k_env, k_run = jax.random.split(key, 4)
    params = setup.network.init(k_params, jnp.zeros((1, *obs_shape), jnp.float32))["params"]
    opt_state = setup.tx.init(params)._replace(key=k_opt)
    obs, env_state = jax.vmap(setup.env.reset, in_axes=(0, None))(
        jax.random.split(k_env, n), setup.env_params
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
        buffer=replay.init(setup.config.buffer_size, example),
        env_state=env_state,
        obs=obs,
        episode_return=jnp.zeros((n,), jnp.float32),
        key=k_run,
        env_steps=jnp.int32(0),
        updates=jnp.int32(0),
    )
    warm = lambda c: env_step(setup, c, True)
    state, _ = _repeat(warm, (state, _zero_acc()), setup.warmup_vec_steps)
    return state


def run(setup: Setup, state: DQNState, num_intervals: int) -> tuple[DQNState, DQNMetrics]:
    """``num_intervals`` surgery intervals (one ``lax.scan``)."""
    return jax.lax.scan(functools.partial(interval, setup), state, None, num_intervals)


def train(setup: Setup, num_intervals: int, key: jax.Array) -> tuple[DQNState, DQNMetrics]:
    """``init`` then every interval of the run."""
    return run(setup, init(setup, key), num_intervals)


def evaluate(
    setup: Setup, state: DQNState, key: jax.Array, num_steps: int, epsilon: float = 0.001
) -> dict[str, jax.Array]:
    """Mean return of the episodes that end in ``num_steps`` vectorised steps of fresh
    environments, acting ε-greedily (small ε) with the masked online network; no learning."""
    n, env, env_params = setup.config.num_envs, setup.env, setup.env_params
    k_env, k_run = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_env, n), env_params)
    weights = wrap_mod.masked(state.params, state.opt_state)

    def body(carry, k):
        obs, env_state, ret, total, count = carry
        k_act, k_explore, k_env = jax.random.split(k, 3)
        greedy = jnp.argmax(q_values(setup, weights, obs), axis=-1)
        explore = jax.random.uniform(k_explore, (n,)) < epsilon
        action = jnp.where(explore, jax.random.randint(k_act, (n,), 0, setup.num_actions), greedy)
        obs, env_state, reward, _, done, _ = step_envs(
            env, env_params, jax.random.split(k_env, n), env_state, action
        )
        ret = ret + reward
        total = total + jnp.sum(jnp.where(done, ret, 0.0))
        count = count + jnp.sum(done).astype(jnp.int32)
        return (obs, env_state, jnp.where(done, 0.0, ret), total, count), None

    init_carry = (obs, env_state, jnp.zeros((n,)), jnp.float32(0.0), jnp.int32(0))
    (_, _, _, total, count), _ = jax.lax.scan(body, init_carry, jax.random.split(k_run, num_steps))
    mean = jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
    return {"mean_return": mean, "episodes": count}


def describe(total_env_steps: int, metrics: DQNMetrics) -> str:
    """A chunk's progress fields: environment steps, the mean return of its episodes, sparsity."""
    episodes = int(metrics.episodes.sum())
    ret = float(metrics.return_sum.sum()) / episodes if episodes else math.nan
    return (
        f"env steps {int(metrics.env_steps[0, -1]):,}/{total_env_steps:,} | return {ret:.2f} "
        f"({episodes} episodes) | sparsity {max(0.0, float(metrics.sparsity[:, -1].mean())):.3f}"
    )


def _final(state: DQNState) -> dict[str, jax.Array]:
    return {"env_steps": state.env_steps, "updates": state.updates}


def _setup(config: DQNConfig, controller: ctl.Controller, probe_cut: int) -> Setup:
    """The environment, network, wrapped Adam and scan layout of ``config`` (validated)."""
    env, env_params = gymnax.make(config.env_name)
    space = env.action_space(env_params)
    if not hasattr(space, "n"):
        raise ValueError(
            f"config.env_name={config.env_name!r} has a continuous action space; DQN needs "
            "discrete actions"
        )
    n, every = config.num_envs, config.prune_every
    updates_per_iter = max(1, n // config.train_every)
    block = math.gcd(every, config.target_update_every)
    tx = wrapped_adam(
        controller,
        lr=config.lr,
        eps=config.adam_eps,
        total_steps=count_intervals(config) * every,
        sparsity=config.sparsity,
        distribution=config.distribution,
        every=every,
    )
    return Setup(
        config=config,
        network=make_network(config, int(space.n)),
        env=env,
        env_params=env_params,
        tx=tx,
        num_actions=int(space.n),
        obs_shape=tuple(env.observation_space(env_params).shape),
        obs_dtype=jnp.uint8 if is_minatar(config.env_name) else jnp.float32,
        probe_cut=probe_cut,
        env_steps_per_iter=max(1, config.train_every // n),
        updates_per_iter=updates_per_iter,
        iters_per_block=block // updates_per_iter,
        blocks_per_interval=every // block,
        warmup_vec_steps=_warmup_steps(config) // n,
    )


def make_dqn(
    config: DQNConfig, controller: str | ctl.Controller | None = None, *, probe_cut: int = 0
) -> DQN:
    """Builds the DQN program for ``config`` (validated before anything is traced).

    Args:
      config: a :class:`DQNConfig`.
      controller: a controller name (default ``config.controller``; built with the config's
        schedule, :func:`emrakul.lab.build.schedule_kwargs`) or a
        :class:`~emrakul.controllers.Controller` object.
      probe_cut: when positive, every surgery update also measures the TD loss
        (``probe_loss``) of a replay probe of that many transitions around each cut, before and
        after it (``DQNMetrics.cut_loss_before`` / ``cut_loss_after``). The probe uses a key
        folded from the state's key, so the run itself is unchanged.

    Returns:
      A :class:`DQN`.

    Raises:
      ValueError: an invalid config (naming the field) or controller name.
    """
    if isinstance(controller, str) or controller is None:
        config = config._replace(controller=controller or config.controller)
        controller = config.controller
    validate(config)
    if probe_cut < 0:
        raise ValueError(f"probe_cut must be >= 0, got {probe_cut}")
    kwargs = schedule_kwargs(config.prune_start, config.prune_end)
    setup = _setup(config, make_controller(controller, kwargs), int(probe_cut))
    num_intervals = count_intervals(config)
    part = functools.partial
    total = _warmup_steps(config) + num_intervals * config.prune_every * config.train_every
    program = Program(
        init=part(init, setup),
        run=part(run, setup),
        num_intervals=num_intervals,
        metrics_type=DQNMetrics,
        loss_field="loss",
        loss_name="TD loss",
        remedy="Lower the DQN's lr.",
        final=_final,
        describe=part(describe, total),
    )
    return DQN(config, setup.network, setup.env, setup.env_params, setup.tx, num_intervals,
               config.prune_every, config.train_every, _warmup_steps(config), program.init,
               program.run, part(train, setup, num_intervals), part(evaluate, setup),
               part(probe_loss, setup), program)  # fmt: skip


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
