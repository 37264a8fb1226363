"""Rolling a population of surgery environments with one policy: the data PPO learns from.

A population is one or several host groups (environments sharing one padded observation shape,
:func:`emrakul.lab.meta.env.population`), each vmapped over ``n`` seeds; their observations are
concatenated along the batch axis, group ``g`` in columns ``g * n ... (g + 1) * n``. One
:func:`rollout` runs one whole episode of every host under ``jax.lax.scan``, sampling the
agent's actions (:func:`emrakul.agent.policy.sample`), as in PureJaxRL's ``make_train``
(Lu et al., 2022, "Discovered Policy Optimisation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from emrakul.agent import networks as nw


class Transition(NamedTuple):
    """One step of every host of the population (leading axis: hosts; ``[T, hosts]`` stacked).

    Attributes:
      obs: the observation the action was taken at.
      action: the sampled action.
      log_prob: its log-probability under the behaviour policy.
      value: the critic's value of ``obs``.
      reward: the reward of the step.
      done: whether the step ended the episode.
    """

    obs: nw.AgentObs
    action: nw.AgentAction
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array


def concat(*trees: Any) -> Any:
    """Concatenates pytrees of arrays along their leading (host) axis."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


def group(tree: Any, g: int, n: int) -> Any:
    """The columns of host group ``g`` (of ``n`` hosts) of a population-batched pytree."""
    return jax.tree.map(lambda a: a[g * n : (g + 1) * n], tree)


def reset(envs: Sequence[Any], n: int, key: jax.Array) -> tuple[nw.AgentObs, tuple]:
    """Resets every group: ``(population observation, per-group env states)``."""
    out = [
        jax.vmap(e.reset)(jax.random.split(jax.random.fold_in(key, g), n))
        for g, e in enumerate(envs)
    ]
    return concat(*[o for o, _ in out]), tuple(s for _, s in out)


def _step(envs: Sequence[Any], apply: Callable, n: int, carry: tuple, _: Any) -> tuple:
    """One step of every host under the policy (a ``jax.lax.scan`` body)."""
    params, env_state, obs, key = carry
    key, k_act, k_env = jax.random.split(key, 3)
    policy, value = apply(params, obs)
    keys = jax.random.split(k_act, len(envs) * n)
    action = jax.vmap(nw.sample)(keys, policy, obs)
    log_prob = jax.vmap(nw.log_prob)(policy, obs, action)
    outs = [
        jax.vmap(e.step)(
            jax.random.split(jax.random.fold_in(k_env, g), n),
            env_state[g],
            group(action, g, n),
            None,
        )
        for g, e in enumerate(envs)
    ]
    next_obs = concat(*[o[0] for o in outs])
    env_state = tuple(o[1] for o in outs)
    reward, done, info = (concat(*[o[i] for o in outs]) for i in (2, 3, 4))
    tr = Transition(obs, action, log_prob, value, reward, done)
    return (params, env_state, next_obs, key), (tr, info)


def rollout(
    envs: Sequence[Any],
    apply: Callable,
    n: int,
    num_steps: int,
    carry: tuple,
) -> tuple[tuple, tuple[Transition, dict]]:
    """Runs ``num_steps`` steps of every host.

    Args:
      envs: the host groups.
      apply: ``apply(params, obs) -> (PolicyParams, value)`` over the population batch.
      n: hosts per group.
      num_steps: steps to run (one episode).
      carry: ``(params, env_states, obs, key)``.

    Returns:
      The final carry and the ``[num_steps, hosts]`` transitions and env ``info``.
    """
    body = lambda c, x: _step(envs, apply, n, c, x)
    return jax.lax.scan(body, carry, None, num_steps)


def reset_after(
    envs: Sequence[Any], n: int, env_state: tuple, obs: nw.AgentObs, key: jax.Array
) -> tuple[tuple, nw.AgentObs]:
    """Resets the groups that do not reset themselves (the episode just ended for all)."""
    if all(getattr(e, "auto_reset", True) for e in envs):
        return env_state, obs
    states, obs_parts = list(env_state), []
    for g, e in enumerate(envs):
        part = group(obs, g, n)
        if not getattr(e, "auto_reset", True):
            keys = jax.random.split(jax.random.fold_in(key, g), n)
            part, states[g] = jax.vmap(e.reset)(keys)
        obs_parts.append(part)
    return tuple(states), concat(*obs_parts)
