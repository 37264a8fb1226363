"""Tests for emrakul.vitals.hessian_diag against the exact Hessian diagonal (jax.hessian)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from emrakul import vitals


def tanh_net():
    """A small 2-layer tanh regression network: params, loss_fn."""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    params = {
        "l1": {"w": jax.random.normal(k1, (3, 4)), "b": 0.1 * jax.random.normal(k2, (4,))},
        "l2": {"w": jax.random.normal(k3, (4, 2))},
    }
    x = jax.random.normal(k4, (8, 3))
    y = jax.random.normal(k5, (8, 2))

    def loss_fn(p):
        h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"])
        return 0.5 * jnp.mean(jnp.sum((h @ p["l2"]["w"] - y) ** 2, axis=-1))

    return params, loss_fn


def exact_hessian(loss_fn, params):
    flat, unravel = ravel_pytree(params)
    h = jax.hessian(lambda f: loss_fn(unravel(f)))(flat)
    return np.asarray(h, np.float64), unravel


def test_matches_exact_diagonal_within_standard_error():
    params, loss_fn = tanh_net()
    h, _ = exact_hessian(loss_fn, params)
    num_probes = 2000
    est = jax.jit(vitals.hessian_diag, static_argnums=(0, 3))(
        loss_fn, params, jax.random.key(1), num_probes
    )
    est = np.asarray(ravel_pytree(est)[0], np.float64)
    diag = np.diag(h)
    # One Rademacher probe's entry i has variance sum_{j != i} H_ij^2 (z_i z_j is +-1 with mean
    # 0 and the products are pairwise uncorrelated); the mean of k probes has variance / k.
    var = np.sum(h**2, axis=1) - diag**2
    stderr = np.sqrt(var / num_probes)
    np.testing.assert_array_less(np.abs(est - diag), 5 * stderr + 1e-5)
    # ... and the test is not vacuous: the off-diagonal part is not negligible.
    assert np.max(stderr) > 1e-3 and np.max(np.abs(diag)) > 1e-2


def test_diagonal_hessian_recovered_exactly_with_one_probe():
    a = {"u": jnp.array([[1.0, -2.0], [3.0, 0.5]]), "v": jnp.array([4.0, -0.25, 0.0])}
    c = {"u": jnp.array([[0.3, 0.1], [-1.0, 2.0]]), "v": jnp.array([1.0, 2.0, 3.0])}

    def quad(p):  # separable: diagonal Hessian a
        return sum(
            jnp.sum(0.5 * a[k] * p[k] ** 2 + c[k] * p[k] + jnp.sin(c[k])) for k in ("u", "v")
        )

    params = {"u": jnp.ones((2, 2)), "v": jnp.zeros(3)}
    for seed in range(3):
        est = vitals.hessian_diag(quad, params, jax.random.key(seed), num_probes=1)
        chex.assert_trees_all_close(est, a, rtol=0, atol=0)


def test_jit_vmap_and_no_retrace_on_new_key():
    params, loss_fn = tanh_net()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def estimate(p, key):
        return vitals.hessian_diag(loss_fn, p, key, num_probes=4)

    keys = jax.random.split(jax.random.key(2), 3)
    single = [estimate(params, k) for k in keys]
    batched = jax.vmap(lambda k: vitals.hessian_diag(loss_fn, params, k, num_probes=4))(keys)
    for i, s in enumerate(single):
        chex.assert_trees_all_close(
            jax.tree_util.tree_map(lambda x, i=i: x[i], batched), s, rtol=1e-5, atol=1e-6
        )
    # Different keys give different (independent) probes.
    assert not np.allclose(ravel_pytree(single[0])[0], ravel_pytree(single[1])[0])

    # vmap over a batch of parameter points.
    points = jax.tree_util.tree_map(lambda x: jnp.stack([x, 0.5 * x]), params)
    out = jax.vmap(lambda p: vitals.hessian_diag(loss_fn, p, keys[0], num_probes=4))(points)
    half = jax.tree_util.tree_map(lambda x: 0.5 * x, params)
    chex.assert_trees_all_close(
        jax.tree_util.tree_map(lambda x: x[1], out),
        vitals.hessian_diag(loss_fn, half, keys[0], num_probes=4),
        rtol=1e-5,
        atol=1e-6,
    )


def test_gradient_of_estimate():
    params, loss_fn = tanh_net()
    key = jax.random.key(4)

    @jax.jit
    def f(p):
        est = vitals.hessian_diag(loss_fn, p, key, num_probes=2)
        return sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(est))

    g = jax.jit(jax.grad(f))(params)
    flat, unravel = ravel_pytree(params)
    gflat = np.asarray(ravel_pytree(g)[0])
    eps = 1e-2
    for i in (0, 5, 13, 20):
        e = jnp.zeros_like(flat).at[i].set(eps)
        fd = (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * eps)
        np.testing.assert_allclose(gflat[i], fd, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_bad_num_probes(bad):
    params, loss_fn = tanh_net()
    with pytest.raises(ValueError, match=r"num_probes must be a static Python int >= 1"):
        vitals.hessian_diag(loss_fn, params, jax.random.key(0), num_probes=bad)


def test_integer_params_rejected():
    with pytest.raises(TypeError, match=r"params leaf 'n'"):
        vitals.hessian_diag(
            lambda p: jnp.sum(p["w"] ** 2),
            {"w": jnp.ones(2), "n": jnp.ones((), jnp.int32)},
            jax.random.key(0),
        )
