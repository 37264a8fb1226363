"""select / structures and the mask pytree helpers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ref_nm, ref_topk

from emrakul import masks
from emrakul.masks import NM, Units, Unstructured


def params(rng):
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
            "bias": jnp.zeros(8),
        },
        "Conv_0": {
            "kernel": jnp.asarray(rng.normal(size=(3, 4, 8)), jnp.float32),
            "bias": jnp.zeros(8),
        },
    }


def test_select_unstructured_matches_topk(rng):
    s = rng.normal(size=(20, 10)).astype(np.float32)
    for sp in [0.0, 0.33, 0.9, 1.0]:
        k = s.size - int(np.round(sp * s.size))
        np.testing.assert_array_equal(masks.select(s, Unstructured(), sp), ref_topk(s, k))


def test_select_nm_fixed_and_from_budget(rng):
    s = rng.normal(size=(8, 16)).astype(np.float32)
    np.testing.assert_array_equal(masks.select(s, NM(2, 4), 0.9), ref_nm(s, 2, 4, -1))
    np.testing.assert_array_equal(masks.select(s, NM(None, 4, 0), 0.75), ref_nm(s, 1, 4, 0))


def test_select_units(rng):
    s = np.abs(rng.normal(size=(3, 3, 4, 10))).astype(np.float32)
    m = np.asarray(masks.select(s, Units(-1), 0.3))
    unit = s.sum(axis=(0, 1, 2))
    keep = ref_topk(unit, 7)
    np.testing.assert_array_equal(m, np.broadcast_to(keep, s.shape))
    m0 = np.asarray(masks.select(s[0, 0], Units(0), 0.5))
    np.testing.assert_array_equal(
        m0, np.broadcast_to(ref_topk(s[0, 0].sum(1), 2)[:, None], (4, 10))
    )


def test_select_traced_sparsity_no_retrace(rng):
    s = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(sp):
        return [masks.select(s, st, sp) for st in (Unstructured(), NM(None, 4), Units())]

    for sp in [0.0, 0.5, 0.75]:
        u, nm, un = f(sp)
        assert int(u.sum()) == 256 - round(sp * 256)
        assert bool(masks.is_nm(nm, 4 - round(sp * 4), 4, exact=True))
        assert int(un[0].sum()) == 8 - round(sp * 8)


def test_select_vmap(rng):
    s = jnp.asarray(rng.normal(size=(4, 12, 8)), jnp.float32)
    sp = jnp.array([0.0, 0.25, 0.5, 0.9])
    out = jax.vmap(lambda s, sp: masks.select(s, Unstructured(), sp))(s, sp)
    np.testing.assert_array_equal(
        np.asarray(out.sum((1, 2))),
        [96 - round(x * 96) for x in [0, 24, 48, 86.4]] if False else [96, 72, 48, 10],
    )


def test_init_apply_sparsity(rng):
    p = params(rng)
    m = masks.init(p)
    assert m["Dense_0"]["kernel"].shape == (16, 8) and m["Dense_0"]["bias"].shape == ()
    assert not masks.is_pruned(m["Conv_0"]["bias"])
    new = masks.map_pruned(lambda mk, w: masks.select(jnp.abs(w), Unstructured(), 0.75), m, p)
    w = masks.apply(p, new)
    np.testing.assert_array_equal(w["Dense_0"]["bias"], p["Dense_0"]["bias"])
    assert int((w["Dense_0"]["kernel"] != 0).sum()) == 32
    np.testing.assert_allclose(float(masks.sparsity(new)), 0.75)
    total = 16 * 8 + 8 + 3 * 4 * 8 + 8
    np.testing.assert_allclose(float(masks.sparsity(new, p)), (96 + 72) / total, rtol=1e-6)
    assert float(masks.sparsity(m)) == 0.0
    jitted = jax.jit(masks.apply)(p, new)
    chex.assert_trees_all_equal(jitted, w)


def test_tree_bad_inputs(rng):
    p = params(rng)
    m = masks.init(p)
    with pytest.raises(ValueError, match="same pytree structure"):
        masks.apply(p, {"Dense_0": m["Dense_0"]})
    bad = jax.tree.map(lambda x: x, m)
    bad["Dense_0"]["kernel"] = jnp.ones((8, 16), bool)
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        masks.apply(p, bad)
    with pytest.raises(TypeError, match="step"):
        masks.init({"step": jnp.zeros((2, 2), jnp.int32)}, filter=lambda path, x: True)
    with pytest.raises(ValueError, match="sparsity must lie"):
        masks.select(jnp.ones(4), Unstructured(), 1.5)
    with pytest.raises(TypeError, match="unknown sparsity structure"):
        masks.select(jnp.ones(4), "channels", 0.5)
    with pytest.raises(ValueError, match="n <= m"):
        masks.select(jnp.ones((2, 4)), NM(5, 4), 0.0)
