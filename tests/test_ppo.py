"""Tests for emrakul.lab.meta.ppo against slow NumPy references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.lab.meta import ppo


def gae_reference(rewards, values, discounts, lam):
    """Loop-based GAE for one trajectory: values [T+1]."""
    t_len = len(rewards)
    adv = np.zeros(t_len)
    acc = 0.0
    for t in reversed(range(t_len)):
        delta = rewards[t] + discounts[t] * values[t + 1] - values[t]
        acc = delta + discounts[t] * lam * acc
        adv[t] = acc
    return adv, adv + values[:-1]


def rollout(rng, t_len, batch):
    rewards = rng.normal(size=(t_len, *batch))
    values = rng.normal(size=(t_len + 1, *batch))
    dones = rng.random((t_len, *batch)) < 0.2
    discounts = 0.97 * (1.0 - dones)
    return [np.asarray(x, np.float32) for x in (rewards, values, discounts)]


def test_gae_matches_loop_reference(rng):
    t_len, batch, lam = 12, (3, 2), 0.9
    rewards, values, discounts = rollout(rng, t_len, batch)
    assert (discounts == 0).any()  # episode boundaries inside the rollout
    adv, ret = jax.jit(ppo.gae)(rewards, values, discounts, lam)
    assert adv.shape == ret.shape == (t_len, *batch)
    for i in range(batch[0]):
        for j in range(batch[1]):
            ref_adv, ref_ret = gae_reference(
                rewards[:, i, j].astype(np.float64),
                values[:, i, j].astype(np.float64),
                discounts[:, i, j].astype(np.float64),
                lam,
            )
            np.testing.assert_allclose(adv[:, i, j], ref_adv, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ret[:, i, j], ref_ret, rtol=1e-5, atol=1e-5)
    # Bootstrap form: values [T] plus V(s_T).
    adv2, ret2 = ppo.gae(rewards, values[:-1], discounts, lam, bootstrap_value=values[-1])
    np.testing.assert_allclose(adv2, adv, atol=1e-6)
    np.testing.assert_allclose(ret2, ret, atol=1e-6)
    # Unbatched, and under vmap over an extra leading population axis.
    a1, _ = ppo.gae(rewards[:, 0, 0], values[:, 0, 0], discounts[:, 0, 0], lam)
    np.testing.assert_allclose(a1, adv[:, 0, 0], atol=1e-6)
    pop = [np.moveaxis(x, 1, 0) for x in (rewards, values, discounts)]
    av, _ = jax.vmap(ppo.gae, in_axes=(0, 0, 0, None))(*pop, lam)
    np.testing.assert_allclose(np.moveaxis(av, 0, 1), adv, atol=1e-6)


def test_gae_lambda_edge_cases(rng):
    rewards, values, discounts = rollout(rng, 6, (2,))
    adv0, _ = ppo.gae(rewards, values, discounts, 0.0)  # one-step TD error
    np.testing.assert_allclose(adv0, rewards + discounts * values[1:] - values[:-1], atol=1e-6)
    _, ret1 = ppo.gae(rewards, values, discounts, 1.0)  # Monte-Carlo return + bootstrap
    ref = np.zeros_like(rewards)
    acc = values[-1]
    for t in reversed(range(6)):
        acc = rewards[t] + discounts[t] * acc
        ref[t] = acc
    np.testing.assert_allclose(ret1, ref, atol=1e-5)


def test_gae_bad_shapes_raise(rng):
    rewards, values, discounts = rollout(rng, 5, (2,))
    with pytest.raises(AssertionError):
        ppo.gae(rewards, values[:-1], discounts, 0.9)  # values need T + 1 steps
    with pytest.raises(AssertionError):
        ppo.gae(rewards, values, discounts[:, :1], 0.9)
    with pytest.raises(AssertionError):
        ppo.gae(rewards, values[:-1], discounts, 0.9, bootstrap_value=values[-1, :1])


def ppo_reference(new_lp, old_lp, adv, v, ret, ent, eps, vc, ec, norm, mask=None, old_v=None):
    """Straight NumPy PPO-clip loss in float64."""
    f = lambda x: np.asarray(x, np.float64).ravel()
    new_lp, old_lp, adv, v, ret, ent = map(f, (new_lp, old_lp, adv, v, ret, ent))
    w = np.ones_like(adv) if mask is None else f(mask)
    sel = w > 0
    if norm:
        a = adv[sel]
        adv = (adv - a.mean()) / (a.std() + 1e-8)
    ratio = np.exp(new_lp - old_lp)
    surr = np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
    policy = -surr[sel].mean()
    err = (v - ret) ** 2
    if old_v is not None:
        old_v = f(old_v)
        err = np.maximum(err, (old_v + np.clip(v - old_v, -eps, eps) - ret) ** 2)
    value = 0.5 * err[sel].mean()
    entropy = ent[sel].mean()
    kl = ((ratio - 1) - np.log(ratio))[sel].mean()
    clipfrac = (np.abs(ratio - 1) > eps)[sel].mean()
    return policy + vc * value - ec * entropy, policy, value, entropy, kl, clipfrac


def random_inputs(rng, shape):
    old_lp = rng.normal(-1.0, 0.5, shape)
    new_lp = old_lp + rng.normal(0.0, 0.3, shape)  # ratios both inside and outside the clip
    adv = rng.normal(0.5, 2.0, shape)
    v = rng.normal(size=shape)
    ret = rng.normal(size=shape)
    ent = rng.uniform(0.1, 1.5, shape)
    return [np.asarray(x, np.float32) for x in (new_lp, old_lp, adv, v, ret, ent)]


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("clip_value", [False, True])
def test_ppo_loss_matches_numpy(rng, norm, use_mask, clip_value):
    shape = (8, 4)
    inputs = random_inputs(rng, shape)
    mask = (rng.random(shape) < 0.7).astype(np.float32) if use_mask else None
    old_v = (inputs[3] + rng.normal(0, 0.3, shape)).astype(np.float32) if clip_value else None
    eps, vc, ec = 0.2, 0.5, 0.01
    fn = jax.jit(ppo.ppo_loss, static_argnames=("normalize_advantages",))
    loss, m = fn(*inputs, eps, vc, ec, normalize_advantages=norm, mask=mask, old_values=old_v)
    ref = ppo_reference(*inputs, eps, vc, ec, norm, mask, old_v)
    assert 0 < ref[5] < 1  # some samples clipped, some not
    got = (loss, m.policy_loss, m.value_loss, m.entropy, m.approx_kl, m.clip_fraction)
    for name, a, b in zip(
        ["loss", "policy", "value", "entropy", "kl", "clip"], got, ref, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(m.loss, loss)


def test_ppo_loss_gradients_point_the_right_way():
    # Two actions, on-policy (ratio 1): the first has a positive advantage, the second negative.
    old_lp = jnp.log(jnp.array([0.5, 0.5]))
    adv = jnp.array([1.0, -1.0])
    zeros = jnp.zeros(2)

    def loss_of(new_lp, values):
        return ppo.ppo_loss(
            new_lp,
            old_lp,
            adv,
            values,
            jnp.ones(2),
            zeros,
            0.2,
            0.5,
            0.0,
            normalize_advantages=False,
        )[0]

    g_lp, g_v = jax.grad(loss_of, argnums=(0, 1))(old_lp, zeros)
    assert np.all(np.isfinite(g_lp)) and np.all(np.isfinite(g_v))
    assert g_lp[0] < 0  # raising the positive-advantage log-prob lowers the loss
    assert g_lp[1] > 0  # raising the negative-advantage log-prob raises it
    assert np.all(g_v < 0)  # values below their targets: raising them lowers the loss
    base = loss_of(old_lp, zeros)
    assert loss_of(old_lp + jnp.array([0.05, 0.0]), zeros) < base
    # Beyond the clip (ratio > 1 + ε) the positive-advantage sample gives no more gradient.
    g_far = jax.grad(loss_of)(old_lp + jnp.array([0.5, 0.0]), zeros)
    assert g_far[0] == 0.0
    # Entropy bonus: more entropy, lower loss.
    g_ent = jax.grad(
        lambda e: ppo.ppo_loss(old_lp, old_lp, adv, zeros, zeros, e, 0.2, 0.5, 0.01)[0]
    )(jnp.ones(2))
    assert np.all(g_ent < 0)


def test_ppo_loss_vmap(rng):
    pop = [
        jnp.asarray(np.stack(x))
        for x in zip(*[random_inputs(rng, (6,)) for _ in range(3)], strict=True)
    ]
    losses, metrics = jax.vmap(lambda *a: ppo.ppo_loss(*a, 0.2, 0.5, 0.01))(*pop)
    assert losses.shape == metrics.approx_kl.shape == (3,)
    for i in range(3):
        ref = ppo_reference(*[np.asarray(x[i]) for x in pop], 0.2, 0.5, 0.01, True)
        np.testing.assert_allclose(losses[i], ref[0], rtol=2e-5, atol=2e-6)


def test_ppo_loss_bad_shapes_raise(rng):
    inputs = random_inputs(rng, (5,))
    bad = list(inputs)
    bad[2] = bad[2][:4]
    with pytest.raises(AssertionError):
        ppo.ppo_loss(*bad, 0.2, 0.5, 0.01)
    with pytest.raises(AssertionError):
        ppo.ppo_loss(*inputs, 0.2, 0.5, 0.01, mask=np.ones(4, np.float32))
    with pytest.raises(AssertionError):  # integer log-probs
        ppo.ppo_loss(*[x.astype(np.int32) for x in inputs], 0.2, 0.5, 0.01)
    with pytest.raises(AssertionError):  # scalars
        ppo.ppo_loss(*[x[0] for x in inputs], 0.2, 0.5, 0.01)


def test_minibatches_shuffle_and_split():
    n = 12
    batch = {"obs": jnp.arange(n * 3.0).reshape(n, 3), "act": jnp.arange(n)}
    mb = jax.jit(ppo.minibatches, static_argnums=2)(jax.random.key(0), batch, 4)
    chex.assert_shape(mb["obs"], (4, 3, 3))
    chex.assert_shape(mb["act"], (4, 3))
    act = np.asarray(mb["act"]).ravel()
    assert sorted(act.tolist()) == list(range(n))  # a permutation
    assert act.tolist() != list(range(n))  # actually shuffled
    np.testing.assert_array_equal(np.asarray(mb["obs"]).reshape(n, 3)[:, 0], act * 3.0)  # aligned
    again = ppo.minibatches(jax.random.key(0), batch, 4)
    np.testing.assert_array_equal(again["act"], mb["act"])  # deterministic
    with pytest.raises(ValueError):
        ppo.minibatches(jax.random.key(0), batch, 5)
    with pytest.raises(AssertionError):
        ppo.minibatches(jax.random.key(0), {"a": jnp.zeros(4), "b": jnp.zeros(5)}, 2)

    # Feeds lax.scan after flattening a [T, B] rollout.
    rollout = {"r": jnp.arange(24.0).reshape(6, 4)}
    flat = ppo.flatten_leading(rollout)
    chex.assert_shape(flat["r"], (24,))
    total, _ = jax.lax.scan(
        lambda c, b: (c + b["r"].sum(), None), 0.0, ppo.minibatches(jax.random.key(1), flat, 3)
    )
    np.testing.assert_allclose(total, np.arange(24.0).sum())
