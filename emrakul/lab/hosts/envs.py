"""Vectorised gymnax environments (Lange 2022, "gymnax: A JAX-based Reinforcement Learning
Environment Library"): one step of ``num_envs`` environments, across gymnax's API versions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
