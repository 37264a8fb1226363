"""Meta-training the Magistrate's plan network with PPO and group-relative advantages.

Every iteration trains, per host group, ``seeds`` host seeds x ``group_size`` plan samples: the
samples of one host seed share its initialisation and data order (common random numbers), so
the advantage of a sample is its return minus the mean return of its group (group-relative, as
in GRPO, Shao et al. 2024), with no critic noise; the critic is trained alongside as the
baseline a single-sample setting would use. Exploration is a Gaussian around the network's raw
plan, held per phase (:mod:`emrakul.lab.meta.plan_rollout`), with one learned log-std per plan
field and an entropy bonus. The update is PPO-clip (Schulman et al. 2017) over the phases'
decisions, ``epochs`` passes of minibatches; rollout and update are one compiled step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.plan_space import SurgeryPlan
from emrakul.lab.meta import plan_rollout as pr
from emrakul.lab.meta import ppo


class PlanPPOConfig(NamedTuple):
    """PPO hyperparameters (per iteration: groups x ``seeds`` x ``group_size`` host runs)."""

    seeds: int = 8
    group_size: int = 4
    phases: int = 4
    lr: float = 3e-4
    init_std: float = 0.3
    clip_eps: float = 0.2
    epochs: int = 4
    num_minibatches: int = 4
    entropy_coef: float = 1e-3
    value_coef: float = 0.5
    max_grad_norm: float = 0.5


class PlanGroup(NamedTuple):
    """One host shape: its trainer (``planned`` controller) and region layout."""

    trainer: Any
    layout: Any
    name: str = ""


class PPOState(NamedTuple):
    """What meta-training carries: the network and log-stds, the optimizer, the RNG."""

    learner: dict[str, Any]  # {"params": network variables, "log_std": {field: scalar}}
    opt_state: Any
    key: jax.Array


def _optimizer(cfg: PlanPPOConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr))


def init_state(params: Any, cfg: PlanPPOConfig, key: jax.Array) -> PPOState:
    """The starting state: ``params`` (zero heads: the neutral plan) and the initial std."""
    log_std = {f: jnp.float32(math.log(cfg.init_std)) for f in SurgeryPlan._fields}
    learner = {"params": params, "log_std": log_std}
    return PPOState(learner, _optimizer(cfg).init(learner), key)


def _rollouts(groups, network, learner, cfg, r_max, l_max, key):
    """Per group: ``[S, G, K]`` phase records and ``[S, G]`` returns (same host key across G)."""
    out = []
    for i, g in enumerate(groups):
        k_host, k_noise = jax.random.split(jax.random.fold_in(key, i))
        host_keys = jax.random.split(k_host, cfg.seeds)
        noise_keys = jax.random.split(k_noise, (cfg.seeds, cfg.group_size))
        one = functools.partial(pr.rollout_host, g.trainer, g.layout, network, learner["params"],
                                learner["log_std"], cfg.phases, r_max, l_max)  # fmt: skip
        over_samples = jax.vmap(one, in_axes=(None, 0))
        out.append(jax.vmap(over_samples)(host_keys, noise_keys))
    return out


def _batch(rolls, cfg: PlanPPOConfig) -> dict[str, Any]:
    """Flattened samples with group-relative advantages (every phase of a run shares them)."""
    parts = []
    for steps, final in rolls:
        adv = final - final.mean(axis=1, keepdims=True)
        ks = (cfg.seeds, cfg.group_size, cfg.phases)
        parts.append({"obs": steps.obs, "plan": steps.plan, "log_prob": steps.log_prob,
                      "adv": jnp.broadcast_to(adv[..., None], ks),
                      "ret": jnp.broadcast_to(final[..., None], ks)})  # fmt: skip
    joined = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
    return jax.tree.map(lambda x: x.reshape((-1, *x.shape[3:])), joined)


def _loss(network: PlanNetwork, cfg: PlanPPOConfig, learner, mb):
    out = jax.vmap(lambda o: network.apply(learner["params"], o))(mb["obs"])
    std = jax.vmap(lambda p: pr.broadcast_std(learner["log_std"], p))(out.plan)
    new_lp = jax.vmap(pr.log_prob)(mb["plan"], out.plan, std, mb["obs"])
    ent = jax.vmap(pr.entropy)(std, mb["obs"])
    return ppo.ppo_loss(new_lp, mb["log_prob"], mb["adv"], out.value, mb["ret"], ent,
                        cfg.clip_eps, cfg.value_coef, cfg.entropy_coef)  # fmt: skip


def make_update(
    groups: Sequence[PlanGroup], network: PlanNetwork, cfg: PlanPPOConfig, r_max: int, l_max: int
):
    """``update(state) -> (state, metrics)``: one iteration (rollouts and PPO epochs), jitted."""
    tx = _optimizer(cfg)

    def sgd(carry, mb):
        learner, opt_state = carry
        (_, m), grads = jax.value_and_grad(functools.partial(_loss, network, cfg),
                                           has_aux=True)(learner, mb)  # fmt: skip
        upd, opt_state = tx.update(grads, opt_state, learner)
        return (optax.apply_updates(learner, upd), opt_state), m

    def update(state: PPOState):
        key, k_roll, k_epochs = jax.random.split(state.key, 3)
        rolls = _rollouts(groups, network, state.learner, cfg, r_max, l_max, k_roll)
        data = _batch(rolls, cfg)

        def epoch(c, k):
            return jax.lax.scan(sgd, c, ppo.minibatches(k, data, cfg.num_minibatches))

        (learner, opt_state), m = jax.lax.scan(
            epoch, (state.learner, state.opt_state), jax.random.split(k_epochs, cfg.epochs)
        )
        metrics = {f"val_accuracy/{g.name}": r[1].mean() for g, r in zip(groups, rolls,
                                                                         strict=True)}  # fmt: skip
        log_std = jnp.stack(list(learner["log_std"].values()))
        metrics.update(val_accuracy=jnp.mean(jnp.stack([r[1].mean() for r in rolls])),
                       approx_kl=m.approx_kl.mean(), clip_fraction=m.clip_fraction.mean(),
                       entropy=m.entropy.mean(), std=jnp.exp(jnp.mean(log_std)))  # fmt: skip
        return PPOState(learner, opt_state, key), metrics

    return jax.jit(update)
