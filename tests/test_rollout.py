"""The population rollout's helpers: host groups along the batch axis, resets after an episode."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.lab.meta import rollout


class _Env(NamedTuple):
    """A stand-in host group: its observation is the group id, its state a counter."""

    gid: float
    auto_reset: bool

    def reset(self, key):
        del key
        return {"x": jnp.full((2,), self.gid)}, jnp.zeros((), jnp.int32)


def test_concat_and_group_are_inverse():
    a = {"x": jnp.arange(6.0).reshape(3, 2)}
    b = {"x": -jnp.arange(6.0).reshape(3, 2)}
    both = rollout.concat(a, b)
    assert both["x"].shape == (6, 2)
    np.testing.assert_array_equal(rollout.group(both, 0, 3)["x"], a["x"])
    np.testing.assert_array_equal(rollout.group(both, 1, 3)["x"], b["x"])


def test_reset_builds_the_population_batch_and_reset_after_resets_only_manual_groups():
    envs = (_Env(1.0, True), _Env(2.0, False))
    obs, states = jax.jit(lambda k: rollout.reset(envs, 3, k))(jax.random.key(0))
    np.testing.assert_array_equal(obs["x"][:, 0], [1, 1, 1, 2, 2, 2])
    assert len(states) == 2 and states[0].shape == (3,)
    stale = {"x": jnp.full((6, 2), 9.0)}
    moved = (states[0] + 5, states[1] + 5)
    new_states, new_obs = rollout.reset_after(envs, 3, moved, stale, jax.random.key(1))
    np.testing.assert_array_equal(new_obs["x"][:, 0], [9, 9, 9, 2, 2, 2])  # group 0 resets itself
    np.testing.assert_array_equal(new_states[0], [5, 5, 5])
    np.testing.assert_array_equal(new_states[1], [0, 0, 0])
    auto = (_Env(1.0, True),)
    same = rollout.reset_after(auto, 3, (states[0],), stale, jax.random.key(1))
    assert same[1] is stale
