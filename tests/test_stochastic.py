"""Gumbel-top-k, Gumbel-softmax and hard-concrete: frequencies against closed forms, gradients."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.masks import (
    gumbel_softmax_mask,
    gumbel_topk,
    hard_concrete,
    hard_concrete_deterministic,
    hard_concrete_l0,
    hard_concrete_prob_nonzero,
    soft_topk,
)

SAMPLES = 40_000
# Frequencies must match within 5 binomial standard errors (a false alarm ~ 1e-6 per check).
SIGMAS = 5.0


def plackett_luce_inclusion(logits: np.ndarray, k: int) -> np.ndarray:
    """Exact inclusion probabilities of sampling k without replacement, weights exp(logits)."""
    w = np.exp(logits - logits.max())
    n = w.size
    incl = np.zeros(n)
    for seq in itertools.permutations(range(n), k):
        p, rest = 1.0, w.sum()
        for i in seq:
            p *= w[i] / rest
            rest -= w[i]
        incl[list(seq)] += p
    return incl


def assert_freq(freq, prob, samples=SAMPLES):
    se = np.sqrt(prob * (1 - prob) / samples) + 1e-4
    np.testing.assert_array_less(np.abs(freq - prob), SIGMAS * se)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gumbel_topk_inclusion_frequencies(k):
    logits = np.array([1.5, 0.2, -0.7, 0.9, 0.0], np.float32)
    keys = jax.random.split(jax.random.PRNGKey(k), SAMPLES)
    draws = jax.jit(jax.vmap(lambda key: gumbel_topk(key, logits, k, 0.5)))(keys)
    draws = np.asarray(draws)
    assert (draws.sum(axis=1) == k).all()
    assert set(np.unique(draws)) <= {0.0, 1.0}
    assert_freq(draws.mean(axis=0), plackett_luce_inclusion(logits.astype(np.float64), k))


def test_soft_topk_sums_to_k_and_gradient_matches_finite_differences(rng):
    z = jnp.asarray(rng.normal(size=(12,)), jnp.float32)
    for k in [1, 4, 11]:
        s = soft_topk(z, k, 0.3)
        np.testing.assert_allclose(float(s.sum()), k, atol=1e-3)
    c = jnp.asarray(rng.normal(size=(12,)), jnp.float32)
    f = lambda z: jnp.sum(c * soft_topk(z, 4, 0.7))
    g = jax.grad(f)(z)
    eps = 1e-2
    fd = np.array([(f(z.at[i].add(eps)) - f(z.at[i].add(-eps))) / (2 * eps) for i in range(12)])
    np.testing.assert_allclose(np.asarray(g), fd, rtol=0.05, atol=2e-3)
    # The budget is preserved to first order: the gradient of sum(soft) vanishes.
    gs = jax.grad(lambda z: jnp.sum(soft_topk(z, 4, 0.7)))(z)
    np.testing.assert_allclose(np.asarray(gs), 0.0, atol=1e-4)


def test_gumbel_topk_straight_through_gradient(rng):
    logits = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    key = jax.random.PRNGKey(3)
    c = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    g = jax.grad(lambda lg: jnp.sum(c * gumbel_topk(key, lg, 6, 0.5)))(logits)
    z = logits + jax.random.gumbel(key, logits.shape)
    want = jax.grad(lambda z: jnp.sum(c * soft_topk(z, 6, 0.5)))(z)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(g)).sum() > 0


def test_gumbel_topk_traced_k_and_temperature_do_not_retrace():
    logits = jnp.linspace(-1.0, 1.0, 20)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(key, k, t):
        return gumbel_topk(key, logits, k, t)

    for k, t in [(0, 0.1), (5, 1.0), (20, 3.0)]:
        assert int(f(jax.random.PRNGKey(0), k, t).sum()) == k


def test_gumbel_softmax_mask_frequency_and_gradient():
    logits = jnp.array([-2.0, -0.5, 0.0, 0.7, 2.5])
    keys = jax.random.split(jax.random.PRNGKey(0), SAMPLES)
    draws = np.asarray(jax.vmap(lambda k: gumbel_softmax_mask(k, logits, 0.5))(keys))
    assert set(np.unique(draws)) <= {0.0, 1.0}
    assert_freq(draws.mean(0), np.asarray(jax.nn.sigmoid(logits)))
    key = jax.random.PRNGKey(1)
    g = jax.grad(lambda lg: gumbel_softmax_mask(key, lg, 0.5).sum())(logits)
    noise = jax.random.logistic(key, logits.shape)
    s = jax.nn.sigmoid((logits + noise) / 0.5)
    np.testing.assert_allclose(np.asarray(g), np.asarray(s * (1 - s) / 0.5), rtol=1e-5)


def test_hard_concrete_frequencies_against_closed_form():
    log_alpha = jnp.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1
    keys = jax.random.split(jax.random.PRNGKey(0), SAMPLES)
    z = np.asarray(jax.jit(jax.vmap(lambda k: hard_concrete(k, log_alpha)))(keys))
    assert z.min() >= 0.0 and z.max() <= 1.0
    la = np.asarray(log_alpha, np.float64)
    sig = lambda v: 1 / (1 + np.exp(-v))
    p_nonzero = sig(la - beta * np.log(-gamma / zeta))
    c1 = (1 - gamma) / (zeta - gamma)
    p_one = sig(la - beta * np.log(c1 / (1 - c1)))
    assert_freq((z > 0).mean(0), p_nonzero)
    assert_freq((z == 1).mean(0), p_one)
    np.testing.assert_allclose(np.asarray(hard_concrete_prob_nonzero(log_alpha)), p_nonzero, 1e-6)
    np.testing.assert_allclose(float(hard_concrete_l0(log_alpha)), p_nonzero.sum(), rtol=1e-6)


def test_hard_concrete_gradients_and_deterministic():
    key = jax.random.PRNGKey(0)
    la = jnp.array([0.0, 0.5, -0.5])
    g = jax.grad(lambda a: hard_concrete(key, a).sum())(la)
    assert np.isfinite(np.asarray(g)).all()
    gl0 = jax.grad(hard_concrete_l0)(la)
    p = hard_concrete_prob_nonzero(la)
    np.testing.assert_allclose(np.asarray(gl0), np.asarray(p * (1 - p)), rtol=1e-6)
    det = hard_concrete_deterministic(jnp.array([-10.0, 0.0, 10.0]))
    np.testing.assert_allclose(np.asarray(det), [0.0, 0.5, 1.0], atol=1e-6)


def test_bad_inputs():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        gumbel_topk(key, jnp.zeros(4), 2, 0.0)
    with pytest.raises(ValueError, match="k must lie"):
        gumbel_topk(key, jnp.zeros(4), 5, 1.0)
    with pytest.raises(TypeError, match="floating"):
        gumbel_softmax_mask(key, jnp.zeros(4, jnp.int32), 1.0)
    with pytest.raises(ValueError, match="gamma < 0"):
        hard_concrete(key, jnp.zeros(3), gamma=0.1)
