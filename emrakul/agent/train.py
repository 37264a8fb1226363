"""Meta-training the Magistrate with PPO on a population of living host networks.

PureJaxRL-style (``make_train(config) -> train``): a population of ``num_hosts`` hosts is one
vmapped :class:`~emrakul.env.SurgeryEnv`; one PPO iteration rolls the population through one
whole episode (every surgery interval of a host training run: ``num_hosts * num_steps``
decisions), computes GAE advantages (Schulman et al. 2016) and takes ``epochs`` passes of
minibatch PPO-clip updates (Schulman et al. 2017) on the agent, all inside one compiled
``update`` step. Python drives the iterations (progress, logging) with the same compiled step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from emrakul.agent import networks as nw
from emrakul.agent import ppo
from emrakul.env import SurgeryEnv


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


class Transition(NamedTuple):
    obs: nw.AgentObs
    action: nw.AgentAction
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array


class Trainer(NamedTuple):
    env: SurgeryEnv
    agent: nw.Agent
    init: Any
    update: Any


def make_agent_train(env: SurgeryEnv, cfg: PPOConfig = PPOConfig()) -> Trainer:  # noqa: B008
    """Builds ``init(key) -> AgentTrainState`` and ``update(state) -> (state, metrics)``."""
    agent = nw.Agent(keep_bias=cfg.keep_bias)
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr))
    batch = cfg.num_hosts * env.num_steps
    if batch % cfg.num_minibatches:
        raise ValueError(
            f"num_minibatches={cfg.num_minibatches} must divide num_hosts * episode length "
            f"= {batch}"
        )

    def init(key: jax.Array) -> AgentTrainState:
        k_env, k_agent, key = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, cfg.num_hosts))
        params = agent.init(k_agent, jax.tree.map(lambda x: x[0], obs))
        return AgentTrainState(params, tx.init(params), env_state, obs, key)

    apply = jax.vmap(agent.apply, in_axes=(None, 0))

    def env_step(carry, _):
        params, env_state, obs, key = carry
        key, k_act, k_env = jax.random.split(key, 3)
        policy, value = apply(params, obs)
        keys = jax.random.split(k_act, cfg.num_hosts)
        action = jax.vmap(nw.sample)(keys, policy, obs)
        log_prob = jax.vmap(nw.log_prob)(policy, obs, action)
        next_obs, env_state, reward, done, info = jax.vmap(env.step)(
            jax.random.split(k_env, cfg.num_hosts), env_state, action, None
        )
        tr = Transition(obs, action, log_prob, value, reward, done)
        return (params, env_state, next_obs, key), (tr, info)

    def loss_fn(params, mb):
        policy, value = apply(params, mb["obs"])
        new_lp = jax.vmap(nw.log_prob)(policy, mb["obs"], mb["action"])
        ent = jax.vmap(nw.entropy)(policy, mb["obs"])
        return ppo.ppo_loss(new_lp, mb["log_prob"], mb["adv"], value, mb["ret"], ent,
                            cfg.clip_eps, cfg.value_coef, cfg.entropy_coef)  # fmt: skip

    def update(state: AgentTrainState):
        carry = (state.params, state.env_state, state.obs, state.key)
        (params, env_state, obs, key), (traj, info) = jax.lax.scan(
            env_step, carry, None, env.num_steps
        )
        last_value = apply(params, obs)[1]
        values = jnp.concatenate([traj.value, last_value[None]], axis=0)
        discounts = cfg.gamma * (1.0 - traj.done.astype(jnp.float32))
        adv, ret = ppo.gae(traj.reward, values, discounts, cfg.gae_lambda)
        data = ppo.flatten_leading(
            {
                "obs": traj.obs,
                "action": traj.action,
                "log_prob": traj.log_prob,
                "adv": adv,
                "ret": ret,
            }
        )

        def epoch(c, k):
            params, opt_state = c
            mbs = ppo.minibatches(k, data, cfg.num_minibatches)

            def sgd(c, mb):
                params, opt_state = c
                (_, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
                upd, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, upd), opt_state), m

            return jax.lax.scan(sgd, (params, opt_state), mbs)

        key, k_epochs = jax.random.split(key)
        (params, opt_state), m = jax.lax.scan(
            epoch, (params, state.opt_state), jax.random.split(k_epochs, cfg.epochs)
        )
        done = traj.done
        metrics = {
            "mean_reward": traj.reward.mean(),
            "episode_return": jnp.sum(jnp.where(done, info["episode_return"], 0.0))
            / jnp.maximum(done.sum(), 1),
            "test_accuracy": jnp.sum(jnp.where(done, info["test_accuracy"], 0.0))
            / jnp.maximum(done.sum(), 1),
            "final_sparsity": jnp.sum(jnp.where(done, info["sparsity"], 0.0))
            / jnp.maximum(done.sum(), 1),
            "loss": m.loss.mean(),
            "approx_kl": m.approx_kl.mean(),
            "clip_fraction": m.clip_fraction.mean(),
            "entropy": m.entropy.mean(),
        }
        return AgentTrainState(params, opt_state, env_state, obs, key), metrics

    return Trainer(env, agent, init, update)
