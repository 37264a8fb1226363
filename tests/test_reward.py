"""Tests for emrakul.lab.meta.reward against hand computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.lab.meta import reward as rw

CFG = rw.RewardConfig()  # α=1, κ=0.5, β=0.01, μ=0, γ=1, ε=0.5, ρ=1, δ=0.01, ζ=1, ξ=1


def summary(**overrides) -> rw.IntervalSummary:
    base = dict(
        val_accuracy_before=0.80,
        val_accuracy_after=0.82,
        loss_before=0.5,
        loss_after_cut=0.75,
        loss_end=0.45,
        param_fraction=0.6,
        flops_fraction=0.5,
        flip_flops=0.002,
        gsnr_health=1.5,
        cut_fraction=0.1,
        sparsity_before=0.3,
        sparsity=0.4,
        target_sparsity=0.8,
    )
    base.update(overrides)
    return rw.IntervalSummary(**base)


def assert_terms(terms: rw.RewardTerms, **expected) -> None:
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(terms, name), value, atol=1e-5, err_msg=name)


def assert_sum(total, terms):
    signed = terms[:8]  # every term but the raw spike quantities
    np.testing.assert_allclose(total, sum(float(t) for t in signed), atol=1e-6)


def test_cut_with_full_recovery_earns_the_spike_back():
    total, terms = rw.reward(summary(), CFG, False)
    # accuracy 1·(0.82−0.80); progress 0.5·(−|0.8−0.4|/0.8 + |0.8−0.3|/0.8) = 0.5·0.125;
    # size −0.01·0.6; oscillation −0.002; spike_raw (0.75−0.5)/0.5 = 0.5 → spike −0.25;
    # recovered clip((0.75−0.45)/0.25) = 1 → recovery +0.25; health 0.01·1.5.
    assert_terms(
        terms,
        accuracy=0.02,
        progress=0.0625,
        size=-0.006,
        oscillation=-0.002,
        spike_raw=0.5,
        spike=-0.25,
        recovered=1.0,
        recovery=0.25,
        health=0.015,
        terminal=0.0,
    )
    np.testing.assert_allclose(total, 0.02 + 0.0625 - 0.006 - 0.002 + 0.015, atol=1e-5)
    assert_sum(total, terms)


def test_partial_recovery_keeps_part_of_the_penalty():
    s = summary(loss_before=1.0, loss_after_cut=1.4, loss_end=1.3)
    _, terms = rw.reward(s, CFG, False)
    # spike_raw 0.4/1.0; recovered (1.4−1.3)/0.4 = 0.25; spike −0.5·0.4; recovery 0.5·0.4·0.25.
    assert_terms(terms, spike_raw=0.4, recovered=0.25, spike=-0.2, recovery=0.05)
    _, terms = rw.reward(s, CFG._replace(rho_recovery=0.5), False)
    assert_terms(terms, spike=-0.2, recovery=0.025)
    # No recovery at all (the loss kept rising): the whole penalty stays.
    _, terms = rw.reward(summary(loss_before=1.0, loss_after_cut=1.4, loss_end=1.6), CFG, False)
    assert_terms(terms, spike=-0.2, recovered=0.0, recovery=0.0)


def test_no_cut_or_no_jump_means_no_spike():
    # No cut: loss noise after the (non-)cut costs nothing.
    _, terms = rw.reward(summary(cut_fraction=0.0, loss_after_cut=0.9), CFG, False)
    assert_terms(terms, spike_raw=0.0, spike=0.0, recovery=0.0)
    # A cut after which the loss fell: no spike, no credit.
    _, terms = rw.reward(summary(loss_after_cut=0.4, loss_end=0.3), CFG, False)
    assert_terms(terms, spike_raw=0.0, spike=0.0, recovery=0.0)
    # Exactly equal losses: finite and zero.
    total, terms = rw.reward(summary(loss_after_cut=0.5, loss_end=0.5), CFG, False)
    assert np.isfinite(total)
    assert_terms(terms, spike=0.0, recovery=0.0)


def test_terminal_term_only_when_terminal():
    s = summary(val_accuracy_after=0.9, sparsity=0.75, target_sparsity=0.8)
    _, terms = rw.reward(s, CFG, False)
    assert_terms(terms, terminal=0.0)
    total_t, terms = rw.reward(s, CFG, True)
    # ζ·0.9 − ξ·(0.8 − 0.75)
    assert_terms(terms, terminal=0.85)
    assert_sum(total_t, terms)
    _, terms = rw.reward(s._replace(sparsity=0.8), CFG, jnp.array(True))
    assert_terms(terms, terminal=0.9)
    # Overshooting the target is not a shortfall.
    _, terms = rw.reward(s._replace(sparsity=0.85), CFG, True)
    assert_terms(terms, terminal=0.9)


def test_flops_mix_and_potential():
    _, terms = rw.reward(summary(), CFG._replace(flops_mix=1.0), False)
    assert_terms(terms, size=-0.005)  # −0.01·0.5
    _, terms = rw.reward(summary(), CFG._replace(flops_mix=0.5), False)
    assert_terms(terms, size=-0.0055)
    np.testing.assert_allclose(rw.sparsity_potential(0.0, 0.9), -1.0)
    np.testing.assert_allclose(rw.sparsity_potential(0.9, 0.9), 0.0)
    # Overshoot is penalised as much as undershoot.
    np.testing.assert_allclose(rw.sparsity_potential(0.99, 0.9), -0.1, atol=1e-6)


def test_jit_and_vmap_match():
    rng = np.random.default_rng(0)
    n = 5
    batch = summary(
        loss_before=rng.uniform(0.3, 1.0, n).astype(np.float32),
        loss_after_cut=rng.uniform(0.3, 1.5, n).astype(np.float32),
        loss_end=rng.uniform(0.2, 1.2, n).astype(np.float32),
        cut_fraction=np.array([0.0, 0.1, 0.2, 0.0, 0.3], np.float32),
        sparsity=rng.uniform(0.3, 0.9, n).astype(np.float32),
    )
    batch = jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,)), batch
    )
    terminal = jnp.array([False, True, False, True, False])
    cfg = jax.tree_util.tree_map(jnp.float32, CFG)
    total_v, terms_v = jax.jit(jax.vmap(rw.reward, in_axes=(0, None, 0)))(batch, cfg, terminal)
    assert total_v.shape == (n,)
    for i in range(n):
        one = jax.tree_util.tree_map(lambda x, i=i: x[i], batch)
        total, terms = rw.reward(one, CFG, bool(terminal[i]))
        np.testing.assert_allclose(total_v[i], total, atol=1e-6)
        for a, b in zip(terms_v, terms, strict=True):
            np.testing.assert_allclose(a[i], b, atol=1e-6)
    # Vectorised without vmap too (elementwise broadcasting).
    total_b, _ = rw.reward(batch, CFG, terminal)
    np.testing.assert_allclose(total_b, total_v, atol=1e-6)
    # Coefficients traced: a sweep over ε does not recompile and changes only the spike terms.
    eps = jnp.array([0.0, 1.0])
    sweep = jax.vmap(lambda e: rw.reward(summary(), cfg._replace(epsilon_spike=e), False)[1])(eps)
    np.testing.assert_allclose(sweep.spike, [0.0, -0.5], atol=1e-5)


def test_gsnr_health():
    gsnr = {"a": jnp.array([[0.0, 1.0], [3.0, 7.0]]), "b": jnp.array([15.0, 0.5, 2.0])}
    alive = {"a": jnp.array([[1, 1], [0, 1]]), "b": jnp.array([True, False, False])}
    # mean of log1p over alive: log1p(0), log1p(1), log1p(7), log1p(15) = 0, ln2, ln8, ln16.
    expected = (0.0 + np.log(2) + np.log(8) + np.log(16)) / 4
    np.testing.assert_allclose(jax.jit(rw.gsnr_health)(gsnr, alive), expected, rtol=1e-6)
    dead = jax.tree_util.tree_map(jnp.zeros_like, alive)
    np.testing.assert_allclose(rw.gsnr_health(gsnr, dead), 0.0)


def test_welford_normalisation_matches_numpy():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3.0, 2.0, size) for size in [(4, 3), (7,), (1,), (5, 2)]]
    state = rw.normalize_init()
    update = jax.jit(rw.normalize_update)
    for c in chunks:
        state = update(state, jnp.asarray(c, jnp.float32))
    allv = np.concatenate([c.ravel() for c in chunks])
    np.testing.assert_allclose(state.count, allv.size)
    np.testing.assert_allclose(state.mean, allv.mean(), rtol=1e-5)
    np.testing.assert_allclose(rw.normalize_std(state), allv.std(), rtol=1e-5)
    x = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(
        rw.normalize(state, x), np.array([1.0, -2.0]) / allv.std(), rtol=1e-5
    )
    np.testing.assert_allclose(
        rw.normalize(state, x, center=True),
        (np.array([1.0, -2.0]) - allv.mean()) / allv.std(),
        rtol=1e-5,
    )
    # Masked entries do not count; an empty state leaves values unscaled.
    mask = np.array([1, 0, 1, 1, 0], bool)
    vals = rng.normal(size=5)
    masked = rw.normalize_update(
        rw.normalize_init(), jnp.asarray(vals, jnp.float32), jnp.asarray(mask)
    )
    np.testing.assert_allclose(masked.count, 3)
    np.testing.assert_allclose(masked.mean, vals[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(rw.normalize_std(masked), vals[mask].std(), rtol=1e-5)
    np.testing.assert_allclose(rw.normalize(rw.normalize_init(), x), x)


@pytest.mark.parametrize("terminal", [False, True])
def test_reward_is_finite_on_edge_cases(terminal):
    s = summary(
        loss_before=0.0, loss_after_cut=0.0, loss_end=0.0, target_sparsity=0.0, sparsity=0.0
    )
    total, terms = rw.reward(s, CFG, terminal)
    assert np.isfinite(total)
    assert all(np.isfinite(t) for t in terms)
