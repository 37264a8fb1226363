"""nm_mask / is_nm against a NumPy reference, under jit and vmap, and bad inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ref_nm

from emrakul.masks import is_nm, nm_mask


@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("axis", [0, -1])
def test_matches_reference(rng, m, axis):
    for trial in range(3):
        shape = [m * 3, m * 2 + 0]
        shape[axis] = m * (trial + 2)
        x = rng.normal(size=shape).astype(np.float32)
        if trial == 1:
            x = rng.integers(-2, 2, size=shape).astype(np.float32)  # ties
        if trial == 2:
            x = -np.abs(x)
        for n in range(m + 1):
            got = np.asarray(jax.jit(nm_mask, static_argnums=(2, 3))(x, n, m, axis))
            np.testing.assert_array_equal(got, ref_nm(x, n, m, axis))
            assert bool(is_nm(got, n, m, axis, exact=True))


def test_conv_kernel_and_is_nm(rng):
    w = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
    mask = nm_mask(w, 2, 4, axis=2)
    assert bool(is_nm(mask, 2, 4, axis=2, exact=True))
    assert bool(is_nm(mask, 3, 4, axis=2))
    assert not bool(is_nm(mask, 1, 4, axis=2))
    assert not bool(is_nm(jnp.ones((4, 8)), 2, 4))


def test_traced_n_no_retrace_and_batched(rng):
    x = jnp.asarray(rng.normal(size=(6, 16)), jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, n):
        return nm_mask(x, n, 4)

    for n in range(5):
        assert int(f(x, n).sum()) == n * 24
    batched = jax.vmap(lambda x, n: nm_mask(x, n, 4))(x, jnp.arange(6) % 5)
    for i in range(6):
        np.testing.assert_array_equal(batched[i], ref_nm(np.asarray(x[i]), i % 5, 4, -1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible by 4"):
        nm_mask(jnp.ones((3, 6)), 2, 4)
    with pytest.raises(ValueError, match="n <= m"):
        nm_mask(jnp.ones((3, 8)), 5, 4)
    with pytest.raises(ValueError, match="n >= 0"):
        nm_mask(jnp.ones((3, 8)), -1, 4)
    with pytest.raises(ValueError, match="positive Python int"):
        nm_mask(jnp.ones((3, 8)), 1, 0)
    with pytest.raises(ValueError, match="divisible"):
        is_nm(jnp.ones((3, 6)), 2, 4)
