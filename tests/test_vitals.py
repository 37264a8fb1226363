"""Tests for emrakul.vitals.state and .signals against a loop-based NumPy reference."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul import vitals
from emrakul.vitals.state import AGE_MAX

SHAPES = {"w": (3, 4), "b": (4,), "s": ()}
LEAVES = sorted(SHAPES)  # the flattening order of a dict


# ----------------------------------------------------------------------------- reference


def ref_run(params_seq, grads_seq, masks, decays, wt, gt):
    """Slow reference: the update recurrences element by element in float64 Python loops.

    Returns a dict of fields, each a dict leaf -> ndarray (or an int for the counters).
    """
    st = {
        "grad_mean": {k: np.zeros(s) for k, s in SHAPES.items()},
        "grad_sq": {k: np.zeros(s) for k, s in SHAPES.items()},
        "flip_rate": {k: np.zeros(s) for k, s in SHAPES.items()},
        "last_sign": {k: np.zeros(s, np.int64) for k, s in SHAPES.items()},
        "age": {k: np.zeros(s, np.int64) for k, s in SHAPES.items()},
        "debias": {k: 1.0 for k in SHAPES},
        "count": 0,
        "nonfinite": 0,
    }
    for params, grads, d in zip(params_seq, grads_seq, decays, strict=True):
        d = float(d)
        st["count"] += 1
        for k in SHAPES:
            g = np.asarray(grads[k], np.float64)
            if not all(np.isfinite(x) for x in g.flat):
                st["nonfinite"] += 1
                continue
            st["debias"][k] *= d
            mask = np.broadcast_to(True if masks is None else masks[k], SHAPES[k])
            for idx in np.ndindex(*SHAPES[k]):
                gi = float(g[idx])
                st["grad_mean"][k][idx] = d * st["grad_mean"][k][idx] + (1 - d) * gi
                st["grad_sq"][k][idx] = d * st["grad_sq"][k][idx] + (1 - d) * gi * gi
                sign = int(np.sign(gi))
                last = int(st["last_sign"][k][idx])
                flip = 1.0 if (sign != 0 and last != 0 and sign != last) else 0.0
                st["flip_rate"][k][idx] = d * st["flip_rate"][k][idx] + (1 - d) * flip
                if sign != 0:
                    st["last_sign"][k][idx] = sign
                w_eff = float(params[k][idx]) * float(mask[idx])
                if abs(w_eff) > wt and abs(gi) > gt:
                    st["age"][k][idx] = 0
                else:
                    st["age"][k][idx] = min(int(st["age"][k][idx]) + 1, 65535)
    return st


def random_sequence(rng, steps):
    """Params/grads sequences with zeros, tiny values, a NaN step and an Inf step."""
    params_seq, grads_seq = [], []
    for t in range(steps):
        params, grads = {}, {}
        for k, s in SHAPES.items():
            w = rng.normal(size=s)
            w = np.where(rng.random(s) < 0.2, 1e-12, w)  # below the weight threshold
            g = rng.normal(size=s)
            g = np.where(rng.random(s) < 0.3, 0.0, g)  # no sign: keeps last_sign
            g = np.where(rng.random(s) < 0.1, 1e-11, g)  # below the grad threshold
            params[k], grads[k] = w.astype(np.float32), g.astype(np.float32)
        if t == 3:
            grads["w"] = grads["w"].copy()
            grads["w"][1, 2] = np.nan
        if t == 5:
            grads["b"] = grads["b"].copy()
            grads["b"][0] = -np.inf
        if t == 6:
            grads["s"] = np.array(np.inf, np.float32)
        params_seq.append(params)
        grads_seq.append(grads)
    return params_seq, grads_seq


def random_masks(rng):
    return {
        "w": rng.random(SHAPES["w"]) < 0.6,
        "b": np.array(True),  # scalar: leaf not pruned
        "s": np.array(True),
    }


def assert_state_close(state, ref, rtol=2e-5, atol=1e-6):
    for field in ("grad_mean", "grad_sq", "flip_rate"):
        for k in SHAPES:
            np.testing.assert_allclose(
                np.asarray(getattr(state, field)[k]),
                ref[field][k],
                rtol=rtol,
                atol=atol,
                err_msg=f"{field}/{k}",
            )
    for field in ("last_sign", "age"):
        for k in SHAPES:
            np.testing.assert_array_equal(
                np.asarray(getattr(state, field)[k]).astype(np.int64),
                ref[field][k],
                err_msg=f"{field}/{k}",
            )
    for k in SHAPES:
        np.testing.assert_allclose(float(state.debias[k]), ref["debias"][k], rtol=1e-5)
    assert int(state.count) == ref["count"]
    assert int(state.nonfinite) == ref["nonfinite"]


def zero_params():
    return {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()}


# ----------------------------------------------------------------------------- init


def test_init_fields_and_dtypes():
    params = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones((3,), jnp.float32)}
    st = vitals.init(params)
    assert st.grad_mean["a"].dtype == jnp.float32  # bf16 params get float32 statistics
    assert st.grad_sq["b"].shape == (3,)
    assert st.flip_rate["a"].shape == (2, 3)
    assert st.last_sign["a"].dtype == jnp.int8
    assert st.age["a"].dtype == jnp.uint16
    assert st.debias["a"].shape == () and st.debias["a"].dtype == jnp.float32
    assert float(st.debias["b"]) == 1.0
    assert st.count.dtype == jnp.int32 and int(st.count) == 0
    assert st.nonfinite.dtype == jnp.int32 and int(st.nonfinite) == 0


def test_init_rejects_integer_leaf():
    with pytest.raises(TypeError, match=r"params leaf 'layer/steps'"):
        vitals.init({"layer": {"kernel": jnp.ones((2, 2)), "steps": jnp.ones((), jnp.int32)}})


# ----------------------------------------------------------------------------- update


@pytest.mark.parametrize("use_masks", [False, True])
def test_update_matches_reference_under_jit(use_masks):
    rng = np.random.default_rng(0)
    steps = 24
    params_seq, grads_seq = random_sequence(rng, steps)
    decays = rng.uniform(0.5, 0.99, size=steps)  # changes every step
    masks = random_masks(rng) if use_masks else None
    wt, gt = 1e-8, 1e-8

    upd = jax.jit(vitals.update)
    st = vitals.init(zero_params())
    for t in range(steps):
        st = upd(st, params_seq[t], grads_seq[t], masks, jnp.float32(decays[t]), wt, gt)
    ref = ref_run(params_seq, grads_seq, masks, decays, wt, gt)
    assert ref["nonfinite"] == 3
    assert_state_close(st, ref)
    # Bias-corrected signals from the reference.
    for k in SHAPES:
        corr = 1 / (1 - ref["debias"][k])
        np.testing.assert_allclose(
            vitals.grad_mean(st)[k], ref["grad_mean"][k] * corr, rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            vitals.fisher(st)[k], ref["grad_sq"][k] * corr, rtol=1e-4, atol=1e-6
        )


def test_update_in_scan_with_traced_thresholds():
    rng = np.random.default_rng(1)
    steps = 16
    params_seq, grads_seq = random_sequence(rng, steps)
    decays = rng.uniform(0.8, 0.999, size=steps)
    masks = random_masks(rng)
    wt, gt = 0.3, 0.5  # large thresholds so ages actually grow

    stack = lambda seq: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *seq)

    @jax.jit
    def run(ps, gs, ds, wt, gt):
        def body(st, xs):
            p, g, d = xs
            return vitals.update(st, p, g, masks, d, wt, gt), None

        return jax.lax.scan(body, vitals.init(zero_params()), (ps, gs, ds))[0]

    st = run(stack(params_seq), stack(grads_seq), jnp.float32(decays), wt, gt)
    assert_state_close(st, ref_run(params_seq, grads_seq, masks, decays, wt, gt))


def test_update_under_vmap_over_runs():
    rng = np.random.default_rng(2)
    batch, steps = 3, 10
    seqs = [random_sequence(rng, steps) for _ in range(batch)]
    decays = rng.uniform(0.5, 0.99, size=(batch, steps))
    masks = random_masks(rng)

    upd = jax.jit(jax.vmap(vitals.update, in_axes=(0, 0, 0, None, 0)))
    st = jax.vmap(lambda _: vitals.init(zero_params()))(jnp.arange(batch))
    stack = lambda xs: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *xs)
    for t in range(steps):
        ps = stack([seqs[b][0][t] for b in range(batch)])
        gs = stack([seqs[b][1][t] for b in range(batch)])
        st = upd(st, ps, gs, masks, jnp.float32(decays[:, t]))
    for b in range(batch):
        ref = ref_run(seqs[b][0], seqs[b][1], masks, decays[b], 1e-8, 1e-8)
        assert_state_close(jax.tree_util.tree_map(lambda x, b=b: x[b], st), ref)


def test_changing_decay_and_thresholds_does_not_retrace():
    params = zero_params()
    grads = {k: jnp.ones(s) for k, s in SHAPES.items()}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def upd(st, decay, wt, gt):
        return vitals.update(st, params, grads, None, decay, wt, gt)

    st = vitals.init(params)
    for decay, wt, gt in [(0.9, 1e-8, 1e-8), (0.5, 0.1, 0.2), (0.999, 0.0, 3.0)]:
        st = upd(st, jnp.float32(decay), jnp.float32(wt), jnp.float32(gt))
    assert int(st.count) == 3

    @jax.jit
    @chex.assert_max_traces(n=1)
    def upd_py(st, decay, wt, gt):  # Python floats: weakly typed traced scalars
        return vitals.update(st, params, grads, None, decay, wt, gt)

    for decay, wt, gt in [(0.9, 1e-8, 1e-8), (0.5, 0.1, 0.2)]:
        st = upd_py(st, decay, wt, gt)
    assert int(st.count) == 5


def test_nonfinite_leaf_is_skipped_and_later_steps_unaffected():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    st0 = vitals.init(params)
    g1 = {"a": jnp.array([[1.0, -2.0], [0.0, 3.0]]), "b": jnp.array([1.0, -1.0, 2.0])}
    st1 = vitals.update(st0, params, g1, decay=0.5)
    bad = {"a": jnp.array([[jnp.nan, 1.0], [1.0, 1.0]]), "b": -g1["b"]}
    st2 = vitals.update(st1, params, bad, decay=0.5)
    for field in ("grad_mean", "grad_sq", "flip_rate", "last_sign", "age", "debias"):
        chex.assert_trees_all_equal(getattr(st2, field)["a"], getattr(st1, field)["a"])
    assert int(st2.nonfinite) == 1 and int(st2.count) == 2
    np.testing.assert_allclose(st2.flip_rate["b"], [0.5, 0.5, 0.5])  # b was updated
    st3 = vitals.update(st2, params, g1, decay=0.5)
    np.testing.assert_allclose(st3.grad_mean["a"], 0.75 * np.asarray(g1["a"]))
    assert int(st3.nonfinite) == 1


def test_age_saturates_and_never_wraps():
    params = {"w": jnp.array([1.0, 1.0, 0.0])}
    st = vitals.init(params)
    st = st._replace(age={"w": jnp.full((3,), AGE_MAX - 1, jnp.uint16)})
    upd = jax.jit(vitals.update)
    # Element 0 is active (weight and gradient large), 1 has no gradient, 2 has no weight.
    grads = {"w": jnp.array([1.0, 0.0, 1.0])}
    ages = []
    for _ in range(4):
        st = upd(st, params, grads)
        ages.append(np.asarray(st.age["w"]).tolist())
    assert ages == [[0, 65535, 65535]] * 4
    assert st.age["w"].dtype == jnp.uint16


def test_mask_zeroes_effective_weight():
    params = {"w": jnp.array([1.0, 1.0])}
    masks = {"w": jnp.array([True, False])}
    st = vitals.update(vitals.init(params), params, {"w": jnp.array([1.0, 1.0])}, masks)
    np.testing.assert_array_equal(st.age["w"], [0, 1])


def test_update_gradient():
    params = {k: jnp.ones(s) for k, s in SHAPES.items()}
    grads = {k: jnp.full(s, 0.5) for k, s in SHAPES.items()}
    st = vitals.init(params)

    def f(g, decay):
        new = vitals.update(st, params, g, decay=decay)
        return sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(new.grad_mean))

    dg, dd = jax.grad(f, argnums=(0, 1))(grads, 0.9)
    for k, s in SHAPES.items():
        np.testing.assert_allclose(dg[k], np.full(s, 0.1), rtol=1e-6)
    # d/d decay of sum((1 - d) * g) = -sum(g) = -0.5 * 17 elements.
    np.testing.assert_allclose(dd, -0.5 * 17, rtol=1e-6)


def test_update_errors():
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    st = vitals.init(params)
    with pytest.raises(ValueError, match=r"grads must have the same pytree structure"):
        vitals.update(st, params, {"a": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"grads leaf 'a' has shape \(3, 2\)"):
        vitals.update(st, params, {"a": jnp.ones((3, 2)), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"masks must have the same pytree structure"):
        vitals.update(st, params, params, {"a": jnp.ones((2, 3), bool)})
    with pytest.raises(ValueError, match=r"masks leaf 'a' has shape \(3,\)"):
        vitals.update(st, params, params, {"a": jnp.ones(3, bool), "b": jnp.array(True)})
    with pytest.raises(ValueError, match=r"state.grad_mean must have the same pytree"):
        vitals.update(vitals.init({"a": params["a"]}), params, params)
    with pytest.raises(TypeError, match=r"grads leaf 'b'"):
        vitals.update(st, params, {"a": jnp.ones((2, 3)), "b": jnp.ones(3, jnp.int32)})


# ----------------------------------------------------------------------------- signals


def ref_gsnr(m, v, debias, eps):
    corr = 1 / (1 - debias) if debias < 1 else 0.0
    mean, sq = m * corr, v * corr
    var = np.maximum(sq - mean**2, 0)
    return mean**2 / (np.maximum(var, eps * mean**2) + np.finfo(np.float32).tiny)


def test_gsnr_matches_reference_and_is_finite():
    rng = np.random.default_rng(3)
    params_seq, grads_seq = random_sequence(rng, 12)
    # A constant-gradient leaf: zero variance.
    for g in grads_seq:
        g["s"] = np.array(0.25, np.float32)
    st = vitals.init(zero_params())
    for p, g in zip(params_seq, grads_seq, strict=True):
        st = vitals.update(st, p, g, decay=0.9)
    out = jax.jit(vitals.gsnr)(st, 1e-4)
    for k in SHAPES:
        ref = ref_gsnr(
            np.float64(st.grad_mean[k]), np.float64(st.grad_sq[k]), float(st.debias[k]), 1e-4
        )
        assert np.all(np.isfinite(out[k]))
        # Away from the cap, compare; the cancellation in E[g^2]-E[g]^2 is float32-limited.
        small = ref < 1e2
        np.testing.assert_allclose(np.asarray(out[k])[small], ref[small], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(out["s"], 1e4, rtol=1e-3)  # constant gradient: the cap 1/eps


def test_gsnr_zero_and_extreme_stats_are_finite():
    params = zero_params()
    st = vitals.init(params)
    for k, x in vitals.gsnr(st).items():  # never updated: all zero
        np.testing.assert_array_equal(x, np.zeros(SHAPES[k]))
    st = vitals.update(st, params, {k: jnp.zeros(s) for k, s in SHAPES.items()})
    for x in jax.tree_util.tree_leaves(vitals.gsnr(st)):  # zero gradients: 0/0 avoided
        np.testing.assert_array_equal(x, 0.0)
    huge = {k: jnp.full(s, 3e38, jnp.float32) for k, s in SHAPES.items()}  # g**2 overflows
    st = vitals.update(st, params, huge)
    for x in jax.tree_util.tree_leaves(vitals.gsnr(st)):
        assert np.all(np.isfinite(x))


def test_gsnr_gradient():
    m = jnp.array([0.3, -0.2, 0.05])
    v = jnp.array([0.5, 0.1, 0.04])
    st = vitals.init({"w": m})._replace(
        grad_mean={"w": m}, grad_sq={"w": v}, debias={"w": jnp.float32(0.5)}
    )

    def f(m, v):
        return jnp.sum(vitals.gsnr(st._replace(grad_mean={"w": m}, grad_sq={"w": v}))["w"])

    dm, dv = jax.grad(f, argnums=(0, 1))(m, v)
    # Analytic: with M = 2m, S = 2v, r = M^2 / (S - M^2): dr/dm = 2 * 2M S / (S - M^2)^2.
    mm, s = 2 * np.float64(m), 2 * np.float64(v)
    np.testing.assert_allclose(dm, 4 * mm * s / (s - mm**2) ** 2, rtol=1e-4)
    np.testing.assert_allclose(dv, -2 * mm**2 / (s - mm**2) ** 2, rtol=1e-4)


def test_saliency_and_magnitude():
    rng = np.random.default_rng(4)
    params = {k: np.float32(rng.normal(size=s)) for k, s in SHAPES.items()}
    grads = {k: np.float32(rng.normal(size=s)) for k, s in SHAPES.items()}
    sal = jax.jit(vitals.saliency)(params, grads)
    mag = jax.vmap(vitals.magnitude)({k: np.stack([v, -v]) for k, v in params.items()})
    for k in SHAPES:
        np.testing.assert_allclose(sal[k], np.abs(params[k] * grads[k]), rtol=1e-6)
        np.testing.assert_allclose(mag[k][1], np.abs(params[k]), rtol=1e-6)
    d = jax.grad(lambda g: jnp.sum(vitals.saliency(params, g)["w"]))(grads)
    np.testing.assert_allclose(d["w"], np.abs(params["w"]) * np.sign(grads["w"]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"grads must have the same pytree structure"):
        vitals.saliency(params, {"w": grads["w"]})
