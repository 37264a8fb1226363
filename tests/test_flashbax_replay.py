"""The flashbax adapter keeps the contract of ``emrakul.lab.hosts.replay``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flashbax")

from emrakul.lab.hosts import flashbax_replay as fr
from emrakul.lab.hosts import replay

EXAMPLE = {"obs": jnp.zeros((3,), jnp.float32), "action": jnp.int32(0)}


def _batch(start: int, n: int) -> dict:
    ids = jnp.arange(start, start + n)
    return {"obs": jnp.repeat(ids[:, None], 3, 1).astype(jnp.float32), "action": ids}


def test_init_is_empty_and_typed_like_the_example():
    state = fr.init(7, EXAMPLE)
    assert fr.capacity(state) == 7
    assert int(fr.size(state)) == 0 and not bool(fr.can_sample(state, 1))
    assert state.storage["obs"].shape == (1, 7, 3)
    assert state.storage["action"].dtype == jnp.int32
    assert state.position.dtype == jnp.int32


@pytest.mark.parametrize("adds", [[2], [2, 3], [4, 4, 4], [5, 1, 5, 2]])
def test_add_writes_the_same_slots_as_replay(adds):
    ours, ref = fr.init(5, EXAMPLE), replay.init(5, EXAMPLE)
    start = 1
    for n in adds:
        ours, ref = fr.add(ours, _batch(start, n)), replay.add(ref, _batch(start, n))
        start += n
        assert int(fr.size(ours)) == int(replay.size(ref))
        assert int(ours.position) == int(ref.position)
        pairs = zip(jax.tree.leaves(ours.storage), jax.tree.leaves(ref.storage), strict=True)
        for got, want in pairs:
            np.testing.assert_array_equal(got[0], want)
    assert bool(fr.can_sample(ours, 5)) == bool(replay.can_sample(ref, 5))


def test_add_casts_to_the_storage_dtype():
    state = fr.add(
        fr.init(4, EXAMPLE),
        {"obs": jnp.ones((2, 3), jnp.int32), "action": np.array([1, 2], np.int64)},
    )
    assert state.storage["obs"].dtype == jnp.float32
    np.testing.assert_array_equal(state.storage["action"][0, :2], [1, 2])


def test_sample_is_uniform_over_the_filled_slots():
    state = fr.add(fr.init(10, EXAMPLE), _batch(1, 4))  # slots 0..3 hold ids 1..4
    batch = jax.jit(fr.sample, static_argnums=2)(state, jax.random.PRNGKey(0), 8)
    assert batch["obs"].shape == (8, 3) and batch["action"].shape == (8,)
    draws = np.concatenate(
        [
            np.asarray(fr.sample(state, key, 10)["action"])
            for key in jax.random.split(jax.random.PRNGKey(1), 400)
        ]
    )
    assert set(np.unique(draws)) == {1, 2, 3, 4}  # never an empty slot
    counts = np.bincount(draws, minlength=5)[1:]
    assert np.all(np.abs(counts / draws.size - 0.25) < 0.03), counts
    np.testing.assert_array_equal(
        np.asarray(fr.sample(state, jax.random.PRNGKey(2), 10)["obs"])[:, 0],
        np.asarray(fr.sample(state, jax.random.PRNGKey(2), 10)["action"]),
    )


def test_sample_after_wraparound_covers_every_slot():
    state = fr.add(fr.add(fr.init(6, EXAMPLE), _batch(1, 4)), _batch(5, 4))  # ids 3..8 remain
    draws = np.asarray(fr.sample(state, jax.random.PRNGKey(3), 6)["action"])
    draws = np.concatenate(
        [draws]
        + [
            np.asarray(fr.sample(state, k, 6)["action"])
            for k in jax.random.split(jax.random.PRNGKey(4), 200)
        ]
    )
    assert set(np.unique(draws)) == {3, 4, 5, 6, 7, 8}


def test_jit_and_vmap_over_seeds():
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    states = jax.vmap(lambda _: fr.init(8, EXAMPLE))(keys)
    batches = jax.vmap(lambda k: _batch(0, 2))(keys)
    states = jax.jit(jax.vmap(fr.add))(states, batches)
    assert fr.size(jax.tree.map(lambda x: x[0], states)) == 2
    sampled = jax.jit(jax.vmap(lambda s, k: fr.sample(s, k, 4)))(states, keys)
    assert sampled["obs"].shape == (3, 4, 3)
    assert set(np.unique(np.asarray(sampled["action"]))) <= {0, 1}
    assert jax.jit(jax.vmap(lambda s: fr.can_sample(s, 2)))(states).all()


def test_inside_a_scan_carry():
    def body(state, i):
        state = fr.add(state, _batch(0, 2))
        return state, fr.size(state)

    _, sizes = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(5)))(fr.init(6, EXAMPLE))
    np.testing.assert_array_equal(sizes, [2, 4, 6, 6, 6])


def test_bad_inputs_raise():
    state = fr.init(4, EXAMPLE)
    with pytest.raises(ValueError, match="capacity"):
        fr.init(0, EXAMPLE)
    with pytest.raises(ValueError, match="capacity"):
        fr.init(True, EXAMPLE)
    with pytest.raises(ValueError, match="at least one array"):
        fr.init(4, {})
    with pytest.raises(ValueError, match="structure"):
        fr.add(state, {"obs": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="batch size"):
        fr.add(state, _batch(0, 5))
    with pytest.raises(ValueError, match="leading batch axis"):
        fr.add(state, {"obs": jnp.zeros((2, 3)), "action": jnp.zeros((3,), jnp.int32)})
    with pytest.raises(ValueError, match="does not match slots"):
        fr.add(state, {"obs": jnp.zeros((2, 4)), "action": jnp.zeros((2,), jnp.int32)})
    with pytest.raises(ValueError, match="batch_size"):
        fr.sample(state, jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="at most capacity"):
        fr.sample(state, jax.random.PRNGKey(0), 5)
    with pytest.raises(ValueError, match="batch_size"):
        fr.can_sample(state, -1)
