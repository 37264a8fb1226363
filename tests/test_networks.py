"""The Magistrate's networks and action distributions: closed forms, masking, invariances."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.agent import networks as N  # noqa: N812
from emrakul.agent.distributions import Categorical, LogitNormal, LogNormal

SAMPLES = 40_000
SIGMAS = 5.0  # frequency checks within 5 binomial standard errors
SMALL = dict(embed_dim=16, hidden_dim=32, phage_layers=1, num_heads=2, message_rounds=2)


def normal_logpdf(y, loc, scale):
    return -0.5 * ((y - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def logit(x):
    return np.log(x) - np.log1p(-x)


def trapz(y, x):
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


# ----------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("loc,scale", [(0.0, 0.5), (1.5, 1.0), (-2.0, 2.5)])
def test_logit_normal_density_entropy_and_samples(loc, scale):
    dist = LogitNormal(jnp.float32(loc), jnp.float32(scale))
    # Density = Gaussian(logit x) times the Jacobian; integrate in logit space, dx = x(1-x) dy.
    y = np.linspace(loc - 12 * scale, loc + 12 * scale, 200_001)
    x = 1 / (1 + np.exp(-y))
    inside = (x > 1e-7) & (x < 1 - 1e-7)  # where float32 log_prob is not clipped
    y, x = y[inside], x[inside]
    expected = normal_logpdf(y, loc, scale) - np.log(x) - np.log1p(-x)
    x32 = x[::1000].astype(np.float32)  # compare at the float32 inputs (x near 1 rounds)
    x64 = x32.astype(np.float64)
    ref = normal_logpdf(logit(x64), loc, scale) - np.log(x64) - np.log1p(-x64)
    np.testing.assert_allclose(dist.log_prob(jnp.asarray(x32)), ref, rtol=1e-4, atol=1e-4)
    dens = np.exp(expected) * x * (1 - x)
    assert abs(trapz(dens, y) - 1.0) < 1e-3 * (1 + (~inside).sum())
    ent_numeric = -trapz(dens * expected, y)
    np.testing.assert_allclose(float(dist.entropy()), ent_numeric, atol=1e-3)
    np.testing.assert_allclose(
        float(dist.latent_entropy()), 0.5 * np.log(2 * np.pi * np.e * scale**2), rtol=1e-6
    )
    samples = LogitNormal(jnp.full(SAMPLES, loc), jnp.full(SAMPLES, scale)).sample(
        jax.random.key(1)
    )
    samples = np.asarray(samples, np.float64)
    assert np.all((samples > 0) & (samples < 1))
    z = logit(np.clip(samples, 1e-7, 1 - 1e-7))
    assert abs(z.mean() - loc) < SIGMAS * scale / np.sqrt(SAMPLES)
    assert abs(z.std() - scale) < 0.02 * scale
    below = np.mean(samples < float(dist.median()))
    assert abs(below - 0.5) < SIGMAS * 0.5 / np.sqrt(SAMPLES)
    if scale < 2:  # Monte Carlo entropy matches -E[log p] (well conditioned when not saturating)
        mc = -float(jnp.mean(dist.log_prob(jnp.asarray(samples, jnp.float32))))
        assert abs(mc - float(dist.entropy())) < 0.03


@pytest.mark.parametrize("loc,scale", [(0.0, 0.3), (-1.0, 1.2)])
def test_log_normal_density_entropy_and_samples(loc, scale):
    dist = LogNormal(jnp.float32(loc), jnp.float32(scale))
    y = np.linspace(loc - 12 * scale, loc + 12 * scale, 100_001)
    x = np.exp(y)
    expected = normal_logpdf(y, loc, scale) - y
    got = np.asarray(dist.log_prob(jnp.asarray(x, jnp.float32)), np.float64)
    np.testing.assert_allclose(got[::500], expected[::500], rtol=1e-4, atol=1e-4)
    dens = np.exp(expected) * x  # dx = x dy
    np.testing.assert_allclose(trapz(dens, y), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(dist.entropy()), -trapz(dens * expected, y), atol=1e-4)
    np.testing.assert_allclose(float(dist.median()), np.exp(loc), rtol=1e-6)
    np.testing.assert_allclose(float(dist.mode()), np.exp(loc - scale**2), rtol=1e-6)
    samples = np.asarray(
        LogNormal(jnp.full(SAMPLES, loc), jnp.float32(scale)).sample(jax.random.key(2))
    )
    assert np.all(samples > 0)
    assert abs(np.log(samples).mean() - loc) < SIGMAS * scale / np.sqrt(SAMPLES)
    assert abs(np.mean(samples < np.exp(loc)) - 0.5) < SIGMAS * 0.5 / np.sqrt(SAMPLES)


def test_categorical_closed_forms_masking_and_frequencies():
    logits = np.array([[1.0, -0.5, 0.3, 2.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    mask = np.array([[True, True, False, True], [True, True, True, True]])
    dist = Categorical.from_logits(jnp.asarray(logits), jnp.asarray(mask))
    z = np.where(mask, logits, -np.inf)
    ref_logp = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    ref_p = np.exp(ref_logp)
    np.testing.assert_allclose(np.asarray(dist.probs), ref_p, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(dist.log_prob(jnp.asarray([3, 1]))), [ref_logp[0, 3], ref_logp[1, 1]], rtol=1e-6
    )
    ref_ent = -np.sum(np.where(ref_p > 0, ref_p * np.where(mask, ref_logp, 0), 0), axis=-1)
    np.testing.assert_allclose(np.asarray(dist.entropy()), ref_ent, rtol=1e-6)
    np.testing.assert_allclose(float(dist.entropy()[1]), np.log(4), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(dist.mode()), [3, 0])
    # A masked maximum is never the mode.
    masked_max = Categorical.from_logits(jnp.asarray([5.0, 1.0, 2.0]), jnp.asarray([0, 1, 1]) > 0)
    assert int(masked_max.mode()) == 2
    keys = jax.random.split(jax.random.key(3), SAMPLES)
    draws = np.asarray(jax.vmap(dist.sample)(keys))  # [SAMPLES, 2]
    for row in range(2):
        freq = np.bincount(draws[:, row], minlength=4) / SAMPLES
        se = np.sqrt(ref_p[row] * (1 - ref_p[row]) / SAMPLES)
        assert np.all(np.abs(freq - ref_p[row]) <= SIGMAS * se + 1e-12), (freq, ref_p[row])
    assert np.all(draws[:, 0] != 2)  # masked entry never sampled

    def loss(lg):
        d = Categorical.from_logits(lg, jnp.asarray(mask))
        return jnp.sum(d.entropy()) + jnp.sum(d.log_prob(jnp.asarray([0, 2])))

    grads = jax.grad(loss)(jnp.asarray(logits))
    assert np.all(np.isfinite(np.asarray(grads)))
    assert float(grads[0, 2]) == 0.0


def test_distributions_jit_vmap():
    locs, scales = jnp.linspace(-2, 2, 5), jnp.linspace(0.2, 2.0, 5)
    fn = jax.jit(jax.vmap(lambda d, x: (d.log_prob(x), d.entropy())))
    lp, ent = fn(LogitNormal(locs, scales), jnp.full(5, 0.3))
    np.testing.assert_allclose(
        np.asarray(lp), np.asarray(LogitNormal(locs, scales).log_prob(0.3)), rtol=1e-5
    )
    assert ent.shape == (5,) and np.all(np.isfinite(np.asarray(ent)))
    # The exact entropy is at most 0 (the uniform's) and close to it near scale ~1.7.
    assert np.all(np.asarray(ent) <= 1e-6)
    assert float(LogitNormal(jnp.float32(0), jnp.float32(1.7)).entropy()) > -0.05


# ----------------------------------------------------------------------------- networks


def make_obs(rng, r_max, f, l_max, g, n_valid, n_layers) -> N.AgentObs:
    """Regions of ``n_layers`` layers, sorted by layer, padded to ``r_max`` / ``l_max``."""
    extra = rng.integers(0, n_layers, max(n_valid - n_layers, 0))
    base = np.arange(n_layers) if n_valid >= n_layers else rng.integers(0, n_layers, n_valid)
    layers = np.sort(np.concatenate([base, extra]))
    region_layer = np.zeros(r_max, np.int32)
    region_layer[:n_valid] = layers
    return N.AgentObs(
        regions=jnp.asarray(rng.normal(size=(r_max, f)) * 2.0, jnp.float32),
        region_valid=jnp.asarray(np.arange(r_max) < n_valid),
        region_layer=jnp.asarray(region_layer),
        layer_valid=jnp.asarray(np.arange(l_max) < n_layers),
        globals=jnp.asarray(rng.normal(size=g), jnp.float32),
    )


def pad_obs(obs: N.AgentObs, r_max: int, l_max: int) -> N.AgentObs:
    r, layers = obs.regions.shape[0], obs.layer_valid.shape[0]
    return N.AgentObs(
        regions=jnp.pad(obs.regions, ((0, r_max - r), (0, 0)), constant_values=7.0),
        region_valid=jnp.pad(obs.region_valid, (0, r_max - r)),
        region_layer=jnp.pad(obs.region_layer, (0, r_max - r)),
        layer_valid=jnp.pad(obs.layer_valid, (0, l_max - layers)),
        globals=obs.globals,
    )


AGENT = N.Agent(**SMALL)


def _forward(variables, obs, key, action):
    policy, value = AGENT.apply(variables, obs)
    state = AGENT.apply(variables, obs, method=N.Agent.encode)
    return dict(
        policy=policy,
        value=value,
        global_state=state.global_state,
        sample=N.sample(key, policy, obs),
        mode=N.mode(policy, obs),
        log_prob=N.log_prob(policy, obs, action),
        entropy=N.entropy(policy, obs),
    )


forward = jax.jit(_forward)
"""Everything the tests compare, in one compiled call per shape."""


def check_outputs(out: dict, r_max: int, l_max: int, values: bool = True) -> None:
    """Shapes and dtypes of everything ``forward`` returns; ranges and finiteness if ``values``."""
    policy = out["policy"]
    assert policy.budget_loc.shape == policy.budget_scale.shape == (l_max,)
    assert policy.region_logits.shape == (r_max, N.NUM_DECISIONS)
    for name in ("temperature_loc", "temperature_scale", "regrow_loc", "regrow_scale"):
        assert getattr(policy, name).shape == ()
    assert out["value"].shape == out["log_prob"].shape == out["entropy"].shape == ()
    for action in (out["sample"], out["mode"]):
        assert action.budget.shape == (l_max,) and action.region.shape == (r_max,)
        assert action.region.dtype == jnp.int32 and action.budget.dtype == jnp.float32
        assert action.temperature.shape == action.regrow.shape == ()
        if values:
            assert np.all((np.asarray(action.budget) > 0) & (np.asarray(action.budget) < 1))
            assert float(action.temperature) > 0 and 0 < float(action.regrow) < 1
            assert np.all((np.asarray(action.region) >= 0) & (np.asarray(action.region) < 4))
    if values:
        for leaf in jax.tree.leaves(out):
            assert np.all(np.isfinite(np.asarray(leaf)))


def some_action(rng, r_max, l_max) -> N.AgentAction:
    return N.AgentAction(
        budget=jnp.asarray(rng.uniform(0.05, 0.95, l_max), jnp.float32),
        temperature=jnp.float32(0.7),
        regrow=jnp.float32(0.2),
        region=jnp.asarray(rng.integers(0, 4, r_max), jnp.int32),
    )


@pytest.fixture(scope="module")
def variables():
    obs = make_obs(np.random.default_rng(0), 16, 5, 4, 3, 10, 3)
    return jax.jit(AGENT.init)(jax.random.key(0), obs)


@pytest.mark.parametrize("r_max,f,l_max,g", [(8, 3, 2, 4), (33, 7, 5, 2), (1, 1, 1, 1)])
def test_shapes(r_max, f, l_max, g):
    rng = np.random.default_rng(r_max)
    obs = make_obs(rng, r_max, f, l_max, g, max(1, r_max - 3), l_max)
    action = some_action(rng, r_max, l_max)
    # Shapes only (abstract evaluation, no compile); values are checked at two shapes below.
    out = jax.eval_shape(
        lambda key: _forward(AGENT.init(key, obs), obs, key, action), jax.random.key(1)
    )
    check_outputs(out, r_max, l_max, values=False)


def test_default_agent_shapes():
    obs = make_obs(np.random.default_rng(0), 40, 9, 6, 11, 30, 5)
    policy, value = jax.eval_shape(
        lambda key: N.Agent().apply(N.Agent().init(key, obs), obs), jax.random.key(0)
    )
    assert policy.budget_loc.shape == (6,) and policy.region_logits.shape == (40, 4)
    assert value.shape == ()


def test_padded_entries_do_not_matter(variables):
    rng = np.random.default_rng(1)
    obs = make_obs(rng, 16, 5, 4, 3, 9, 3)
    action = some_action(rng, 16, 4)
    key = jax.random.key(5)
    base = forward(variables, obs, key, action)
    junk = np.asarray(obs.regions).copy()
    junk[9:] = rng.normal(size=junk[9:].shape) * 1e6
    junk[12] = np.nan
    changed = obs._replace(
        regions=jnp.asarray(junk),
        region_layer=obs.region_layer.at[9:].set(jnp.asarray(rng.integers(0, 4, 7), jnp.int32)),
    )
    other_action = action._replace(
        region=action.region.at[9:].set((action.region[9:] + 1) % 4),
        budget=action.budget.at[3].set(0.01),
    )
    out = forward(variables, changed, key, other_action)
    chex.assert_trees_all_close(out, base, rtol=1e-6, atol=1e-6)
    # Padded regions are forced to KEEP (probability 1), padded layers to the neutral budget.
    assert np.all(np.asarray(out["sample"].region[9:]) == N.KEEP)
    np.testing.assert_allclose(
        np.asarray(out["sample"].budget[3]), float(jax.nn.sigmoid(base["policy"].budget_loc[3]))
    )


def test_padding_to_larger_shapes_gives_the_same_outputs(variables):
    rng = np.random.default_rng(2)
    obs = make_obs(rng, 7, 5, 3, 3, 7, 3)  # no padding at all
    action = some_action(rng, 7, 3)
    key = jax.random.key(0)
    small = forward(variables, obs, key, action)
    big_obs = pad_obs(obs, 16, 4)
    big_action = action._replace(
        region=jnp.pad(action.region, (0, 9), constant_values=3),
        budget=jnp.pad(action.budget, (0, 1), constant_values=0.9),
    )
    big = forward(variables, big_obs, key, big_action)
    check_outputs(small, 7, 3)
    check_outputs(big, 16, 4)
    for name in ("value", "global_state", "log_prob", "entropy"):
        np.testing.assert_allclose(big[name], small[name], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(
        jax.tree.map(lambda b, s: b[: s.shape[0]] if b.ndim else b, big["policy"], small["policy"]),
        small["policy"],
        rtol=1e-5,
        atol=1e-5,
    )


def test_permuting_regions_is_invariant_for_pooled_outputs(variables):
    rng = np.random.default_rng(3)
    obs = make_obs(rng, 16, 5, 4, 3, 12, 4)
    action = some_action(rng, 16, 4)
    key = jax.random.key(0)
    base = forward(variables, obs, key, action)
    layer = np.asarray(obs.region_layer)
    within = np.arange(16)
    for l in range(4):  # noqa: E741
        idx = np.flatnonzero((layer == l) & np.asarray(obs.region_valid))
        within[idx] = rng.permutation(idx)
    everything = rng.permutation(16)  # across layers and padding too (layer ids move along)
    for perm in (within, everything):
        p_obs = N.AgentObs(
            regions=obs.regions[perm],
            region_valid=obs.region_valid[perm],
            region_layer=obs.region_layer[perm],
            layer_valid=obs.layer_valid,
            globals=obs.globals,
        )
        p_action = action._replace(region=action.region[perm])
        out = forward(variables, p_obs, key, p_action)
        for name in ("value", "global_state", "log_prob", "entropy"):
            np.testing.assert_allclose(out[name], base[name], rtol=1e-5, atol=1e-5)
        for name in ("budget_loc", "budget_scale", "temperature_loc", "regrow_loc"):
            np.testing.assert_allclose(
                getattr(out["policy"], name), getattr(base["policy"], name), atol=1e-5
            )
        np.testing.assert_allclose(
            out["policy"].region_logits, base["policy"].region_logits[perm], atol=1e-5
        )


def test_one_compiled_policy_serves_hosts_of_different_sizes(variables):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def act(variables, obs, key):
        policy, value = AGENT.apply(variables, obs)
        action = N.sample(key, policy, obs)
        return action, N.log_prob(policy, obs, action), value

    rng = np.random.default_rng(4)
    for n_valid, n_layers in [(1, 1), (5, 2), (12, 4), (16, 3)]:
        obs = make_obs(rng, 16, 5, 4, 3, n_valid, n_layers)
        action, lp, value = act(variables, obs, jax.random.key(n_valid))
        assert np.isfinite(float(lp)) and np.isfinite(float(value))
        assert np.all(np.asarray(action.region[n_valid:]) == N.KEEP)


def test_log_prob_of_samples_matches_direct_computation(variables):
    rng = np.random.default_rng(5)
    obs = make_obs(rng, 16, 5, 4, 3, 11, 3)
    # A policy away from the neutral init, so every region term matters.
    policy = forward(variables, obs, jax.random.key(0), some_action(rng, 16, 4))["policy"]
    policy = policy._replace(
        region_logits=jnp.where(
            obs.region_valid[:, None], jnp.asarray(rng.normal(size=(16, 4)), jnp.float32), 0.0
        )
    )
    sample_and_score = jax.jit(
        lambda key: (lambda a: (a, N.log_prob(policy, obs, a), N.log_prob_terms(policy, obs, a)))(
            N.sample(key, policy, obs)
        )
    )
    for seed in range(3):
        action, got, terms = sample_and_score(jax.random.key(seed))
        p = jax.tree.map(lambda x: np.asarray(x, np.float64), policy)
        a = jax.tree.map(lambda x: np.asarray(x, np.float64), action)
        lv, rv = np.asarray(obs.layer_valid), np.asarray(obs.region_valid)
        b = a.budget
        ref = np.sum(
            (normal_logpdf(logit(b), p.budget_loc, p.budget_scale) - np.log(b) - np.log1p(-b))[lv]
        )
        t = a.temperature
        ref += normal_logpdf(np.log(t), p.temperature_loc, p.temperature_scale) - np.log(t)
        ref += (
            normal_logpdf(logit(a.regrow), p.regrow_loc, p.regrow_scale)
            - np.log(a.regrow)
            - np.log1p(-a.regrow)
        )
        lg = p.region_logits
        logp = lg - np.log(np.sum(np.exp(lg), axis=1, keepdims=True))
        ref += np.sum(logp[np.arange(16), a.region.astype(int)][rv])
        np.testing.assert_allclose(float(got), ref, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(float(sum(terms)), float(got), rtol=1e-6)


def test_entropy_and_gradients_are_finite(variables):
    rng = np.random.default_rng(6)
    obs = make_obs(rng, 16, 5, 4, 3, 8, 2)
    obs = obs._replace(regions=obs.regions.at[10].set(jnp.nan))  # NaN padding
    out = forward(variables, obs, jax.random.key(0), some_action(rng, 16, 4))
    action = out["sample"]
    assert np.isfinite(float(out["entropy"]))

    def loss(v):
        policy, value = AGENT.apply(v, obs)
        return -N.log_prob(policy, obs, action) + value**2 - 0.01 * N.entropy(policy, obs)

    value, grads = jax.jit(jax.value_and_grad(loss))(variables)
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    for part in ("magistrate", "surgeon_general", "specialist", "critic"):
        assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["params"][part]))


def test_jit_vmap_over_a_batch(variables):
    rng = np.random.default_rng(7)
    batch = [make_obs(rng, 16, 5, 4, 3, n, k) for n, k in [(3, 1), (9, 3), (16, 4)]]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *batch)
    keys = jax.random.split(jax.random.key(0), 3)

    @jax.jit
    def batched(variables, obs, keys):
        policy, value = jax.vmap(AGENT.apply, in_axes=(None, 0))(variables, obs)
        action = jax.vmap(N.sample)(keys, policy, obs)
        return policy, value, action, jax.vmap(N.log_prob)(policy, obs, action)

    policy, value, action, lp = batched(variables, stacked, keys)
    assert value.shape == lp.shape == (3,) and action.region.shape == (3, 16)
    for i, obs in enumerate(batch):
        out = forward(variables, obs, keys[i], some_action(rng, 16, 4))
        p_i, v_i = out["policy"], out["value"]
        np.testing.assert_array_equal(action.region[i], out["sample"].region)
        np.testing.assert_allclose(value[i], v_i, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], policy), p_i, atol=1e-5)
    with pytest.raises(ValueError, match="unbatched"):
        AGENT.apply(variables, stacked)


def test_initial_policy_is_neutral_gmp(variables):
    rng = np.random.default_rng(8)
    obs = make_obs(rng, 16, 5, 4, 3, 13, 4)
    obs = obs._replace(regions=obs.regions * 100.0, globals=obs.globals * 100.0)
    out = forward(variables, obs, jax.random.key(0), some_action(rng, 16, 4))
    policy, action = out["policy"], out["mode"]
    assert np.all(np.asarray(action.region) == N.KEEP)
    np.testing.assert_allclose(action.budget, 0.5, atol=0.01)
    np.testing.assert_allclose(action.temperature, 1.0, atol=0.02)
    np.testing.assert_allclose(action.regrow, 0.5, atol=0.01)
    # Sampling keeps a region with probability e^3 / (e^3 + 3) ~ 0.87.
    probs = np.asarray(jax.nn.softmax(policy.region_logits[:13], axis=-1))
    np.testing.assert_allclose(probs[:, 0], np.exp(3) / (np.exp(3) + 3), atol=0.02)
    # With zero output weights (head_init_scale=0) the neutral policy is exact, whatever the obs.
    shapes = jax.eval_shape(N.Agent(**SMALL, head_init_scale=0.0).init, jax.random.key(1), obs)
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    params = variables["params"]
    zeroed = {
        "surgeon_general": {
            **params["surgeon_general"],
            "budget_out": {**params["surgeon_general"]["budget_out"]},
            "global_out": {**params["surgeon_general"]["global_out"]},
        },
        "specialist": {**params["specialist"], "out": {**params["specialist"]["out"]}},
    }
    for head in (zeroed["surgeon_general"]["budget_out"], zeroed["surgeon_general"]["global_out"]):
        head["kernel"] = jnp.zeros_like(head["kernel"])
    zeroed["specialist"]["out"]["kernel"] = jnp.zeros_like(params["specialist"]["out"]["kernel"])
    exact = forward(
        {"params": {**params, **zeroed}}, obs, jax.random.key(0), some_action(rng, 16, 4)
    )
    np.testing.assert_array_equal(exact["mode"].budget, np.full(4, 0.5, np.float32))
    np.testing.assert_allclose(exact["mode"].temperature, 1.0, rtol=1e-6)
    np.testing.assert_allclose(exact["mode"].regrow, 0.5, rtol=1e-6)
    np.testing.assert_allclose(
        exact["policy"].region_logits[:13], np.tile([3.0, 0, 0, 0], (13, 1)), atol=1e-6
    )


def test_actor_runs_without_critic_params(variables):
    obs = make_obs(np.random.default_rng(9), 16, 5, 4, 3, 6, 2)
    actor_vars = {"params": {k: v for k, v in variables["params"].items() if k != "critic"}}
    policy, value = jax.jit(
        lambda a, v, o: (
            AGENT.apply(a, o, method=N.Agent.actor),
            AGENT.apply(v, o, method=N.Agent.value),
        )
    )(actor_vars, variables, obs)
    full = forward(variables, obs, jax.random.key(0), some_action(np.random.default_rng(0), 16, 4))
    chex.assert_trees_all_close(policy, full["policy"], atol=1e-6)
    np.testing.assert_allclose(value, full["value"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- module layout


def test_networks_gathers_the_agent_modules_public_names():
    from emrakul.agent import encoder, heads, policy, spaces

    for module in (spaces, encoder, heads, policy):
        for name in dir(module):
            if not name.startswith("_") and name in N.__all__:
                assert getattr(N, name) is getattr(module, name), name
    used = ("Agent", "AgentObs", "AgentAction", "PolicyParams", "Magistrate", "Phage", "Critic",
            "SurgeonGeneral", "Specialist", "sample", "mode", "log_prob", "entropy",
            "log_prob_terms", "entropy_terms", "KEEP", "LYSE", "DECISIONS")  # fmt: skip
    for name in used:
        assert name in N.__all__ and hasattr(N, name), name


def test_check_obs_names_a_bad_rank():
    obs = N.AgentObs(jnp.zeros((4, 3)), jnp.ones(4, bool), jnp.zeros(4, jnp.int32),
                     jnp.ones(2, bool), jnp.zeros((1, 5)))  # fmt: skip
    with pytest.raises(ValueError, match=r"AgentObs.globals must have rank 1"):
        N.check_obs(obs)
    with pytest.raises(ValueError, match=r"must have R_max = 4"):
        N.check_obs(obs._replace(globals=jnp.zeros(5), region_valid=jnp.ones(3, bool)))
    assert N.check_obs(obs._replace(globals=jnp.zeros(5))) == (4, 2)
