"""Meta-training the Magistrate with PPO on a population of living host networks.

PureJaxRL-style (``make_train(config) -> train``; Lu et al., 2022, "Discovered Policy
Optimisation"): a population is one or several :class:`~emrakul.lab.meta.env.SurgeryEnv`
groups (hosts of different widths and depths; build them with
:func:`emrakul.lab.meta.env.population` so that they share one padded observation shape), each
vmapped over ``num_hosts`` seeds; one policy acts on all of them. One PPO iteration rolls the
population through one whole episode (every surgery interval of a host training run:
``num_hosts * num_steps`` decisions, :mod:`emrakul.lab.meta.rollout`), computes GAE advantages
(Schulman et al., 2016) and takes ``epochs`` passes of minibatch PPO-clip updates (Schulman et
al., 2017) on the agent, all inside one compiled ``update`` step. Python drives the iterations
(progress, logging) with the same compiled step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from emrakul.agent import networks as nw
from emrakul.lab.meta import ppo, rollout

#: ``info`` keys averaged over the episodes that ended in an iteration (those an env reports).
FINAL_KEYS = ("test_accuracy", "final_score", "final_return")


class PPOConfig(NamedTuple):
    """PPO hyperparameters (defaults: small, conservative)."""

    num_hosts: int = 8
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    epochs: int = 4
    num_minibatches: int = 4
    max_grad_norm: float = 0.5
    keep_bias: float = 5.0


class AgentTrainState(NamedTuple):
    """What the meta-training loop carries."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: nw.AgentObs
    key: jax.Array


class Trainer(NamedTuple):
    """The compiled pieces of meta-training.

    Attributes:
      env: the first host group (a ``SurgeryEnv`` or a ``DQNSurgeryEnv``).
      agent: the :class:`~emrakul.agent.networks.Agent` being trained.
      init: ``init(key) -> AgentTrainState``.
      update: ``update(state) -> (state, metrics)``, one PPO iteration.
      envs: every host group.
    """

    env: Any
    agent: nw.Agent
    init: Any
    update: Any
    envs: tuple[Any, ...] = ()


def _check_population(env: Any, cfg: PPOConfig) -> tuple[Any, ...]:
    """The host groups of ``env``, checked to share episode length and padding."""
    envs = (env,) if hasattr(env, "step") else tuple(env)
    if not envs:
        raise ValueError("make_agent_train needs at least one environment")
    shapes = {(e.num_steps, e.r_max, e.l_max) for e in envs}
    if len(shapes) != 1:
        raise ValueError(
            "host groups must share the episode length and the padding (num_steps, r_max, "
            f"l_max); got {sorted(shapes)} (build them with emrakul.lab.meta.env.population)"
        )
    batch = len(envs) * cfg.num_hosts * envs[0].num_steps
    if batch % cfg.num_minibatches:
        raise ValueError(
            f"num_minibatches={cfg.num_minibatches} must divide groups * num_hosts * episode "
            f"length = {batch}"
        )
    return envs


def _loss(apply: Callable, cfg: PPOConfig, params: Any, mb: dict) -> tuple:
    """The PPO loss of one minibatch of the flattened rollout."""
    policy, value = apply(params, mb["obs"])
    new_lp = jax.vmap(nw.log_prob)(policy, mb["obs"], mb["action"])
    ent = jax.vmap(nw.entropy)(policy, mb["obs"])
    return ppo.ppo_loss(new_lp, mb["log_prob"], mb["adv"], value, mb["ret"], ent,
                        cfg.clip_eps, cfg.value_coef, cfg.entropy_coef)  # fmt: skip


def _optimize(
    apply: Callable,
    tx: optax.GradientTransformation,
    cfg: PPOConfig,
    params_and_opt: tuple,
    data: dict,
    key: jax.Array,
) -> tuple[tuple, ppo.PPOMetrics]:
    """``cfg.epochs`` passes of minibatch PPO updates over ``data``; metrics ``[epochs, mbs]``."""

    def sgd(c, mb):
        params, opt_state = c
        loss = functools.partial(_loss, apply, cfg)
        (_, m), grads = jax.value_and_grad(loss, has_aux=True)(params, mb)
        upd, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, upd), opt_state), m

    def epoch(c, k):
        return jax.lax.scan(sgd, c, ppo.minibatches(k, data, cfg.num_minibatches))

    return jax.lax.scan(epoch, params_and_opt, jax.random.split(key, cfg.epochs))


def _metrics(
    traj: rollout.Transition, info: dict, m: ppo.PPOMetrics, groups: int, n: int
) -> dict[str, jax.Array]:
    """The iteration's metrics (see :func:`make_agent_train`)."""
    done = traj.done

    def at_end(x, d=done):  # mean over the episodes that ended
        return jnp.sum(jnp.where(d, x, 0.0)) / jnp.maximum(d.sum(), 1)

    finals = [k for k in FINAL_KEYS if k in info]
    metrics = {
        "mean_reward": traj.reward.mean(),
        "episode_return": at_end(info["episode_return"]),
        **{k: at_end(info[k]) for k in finals},
        "final_sparsity": at_end(info["sparsity"]),
        "loss": m.loss.mean(),
        "approx_kl": m.approx_kl.mean(),
        "clip_fraction": m.clip_fraction.mean(),
        "entropy": m.entropy.mean(),
    }
    if groups > 1:  # per host group: [T, groups * n] columns g * n ... (g + 1) * n
        for g in range(groups):
            cols = slice(g * n, (g + 1) * n)
            for k in finals:
                metrics[f"{k}/{g}"] = at_end(info[k][:, cols], done[:, cols])
    return metrics


def make_agent_train(
    env: Any,
    cfg: PPOConfig = PPOConfig(),  # noqa: B008
) -> Trainer:
    """Builds ``init(key) -> AgentTrainState`` and ``update(state) -> (state, metrics)``.

    Args:
      env: one environment (a :class:`~emrakul.lab.meta.env.SurgeryEnv` or an RL-host
        :class:`~emrakul.lab.meta.rl_env.DQNSurgeryEnv`), or several host groups
        (:func:`emrakul.lab.meta.env.population`: same padded observation shape and episode
        length); each group runs ``cfg.num_hosts`` hosts. Every update rolls exactly one
        episode, so a group whose ``auto_reset`` is ``False`` is reset after the rollout
        instead of inside it.
      cfg: the PPO hyperparameters.

    ``metrics``: PPO statistics, the mean reward and, over the episodes that ended, the mean
    episode return, final sparsity and whichever of :data:`FINAL_KEYS` the environments report
    (per group as ``KEY/G`` when there are several groups).

    Raises:
      ValueError: groups with different episode lengths or observation padding, or a
        minibatch count that does not divide the batch.
    """
    envs = _check_population(env, cfg)
    num_steps, n = envs[0].num_steps, cfg.num_hosts
    agent = nw.Agent(keep_bias=cfg.keep_bias)
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr))
    apply = jax.vmap(agent.apply, in_axes=(None, 0))

    def init(key: jax.Array) -> AgentTrainState:
        k_env, k_agent, key = jax.random.split(key, 3)
        obs, env_state = rollout.reset(envs, n, k_env)
        params = agent.init(k_agent, jax.tree.map(lambda x: x[0], obs))
        return AgentTrainState(params, tx.init(params), env_state, obs, key)

    def update(state: AgentTrainState) -> tuple[AgentTrainState, dict[str, jax.Array]]:
        carry = (state.params, state.env_state, state.obs, state.key)
        (params, env_state, obs, key), (traj, info) = rollout.rollout(
            envs, apply, n, num_steps, carry
        )
        env_state, obs = rollout.reset_after(
            envs, n, env_state, obs, jax.random.fold_in(key, 0x7E5E7)
        )
        last_value = apply(params, obs)[1]  # multiplied by discount 0: the episode has ended
        values = jnp.concatenate([traj.value, last_value[None]], axis=0)
        discounts = cfg.gamma * (1.0 - traj.done.astype(jnp.float32))
        adv, ret = ppo.gae(traj.reward, values, discounts, cfg.gae_lambda)
        fields = {"obs": traj.obs, "action": traj.action, "log_prob": traj.log_prob}
        data = ppo.flatten_leading({**fields, "adv": adv, "ret": ret})
        key, k_epochs = jax.random.split(key)
        (params, opt_state), m = _optimize(
            apply, tx, cfg, (params, state.opt_state), data, k_epochs
        )
        metrics = _metrics(traj, info, m, len(envs), n)
        return AgentTrainState(params, opt_state, env_state, obs, key), metrics

    return Trainer(envs[0], agent, init, update, envs)
