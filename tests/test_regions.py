"""Tests for emrakul.vitals.regions against a slow, loop-based NumPy reference."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.masks.structures import NM, Units, Unstructured
from emrakul.vitals import regions as rg

STRUCTURES = {
    "unstructured": Unstructured(),
    "units": Units(),
    "units_in": Units(axis=-2),
    "nm_last": NM(2, 4, -1),
    "nm_in": NM(None, 2, -2),
}

_REF_OPS = {
    "mean": np.mean,
    "max": np.max,
    "min": np.min,
    "std": np.std,
    "logmean": lambda r: np.mean(np.log(np.abs(r) + 1e-12)),
    "sum": np.sum,
}


def _shapes(rng: np.random.Generator, structure) -> dict:
    """Random Dense [in, out], Conv [3, 3, cin, cout] and 1-D Conv [k, cin, cout] shapes."""
    m = structure.m if isinstance(structure, NM) else 1

    def fit(shape):
        if m == 1:
            return shape
        shape = list(shape)
        axis = structure.axis % len(shape)
        shape[axis] = m * int(rng.integers(1, 4))
        return tuple(shape)

    ch = lambda: int(rng.integers(2, 7))
    return {
        "dense": {"kernel": fit((ch(), ch())), "bias": (5,)},
        "conv": {"kernel": fit((3, 3, ch(), ch())), "bias": (4,)},
        "conv1d": {"kernel": fit((int(rng.integers(1, 4)), ch(), ch()))},
    }


def _tree(rng: np.random.Generator, shapes: dict, kind: str = "normal") -> dict:
    def leaf(s):
        if kind == "bool":
            return rng.random(s) < 0.5
        return rng.normal(size=s).astype(np.float32)

    return jax.tree.map(leaf, shapes, is_leaf=lambda x: isinstance(x, tuple))


def _ref_regions(x: np.ndarray, structure) -> list[np.ndarray]:
    """The weights of every region of ``x``, in region order, by explicit loops."""
    if isinstance(structure, Unstructured):
        return [x.ravel()]
    axis = structure.axis % x.ndim
    if isinstance(structure, Units):
        return [np.take(x, i, axis=axis).ravel() for i in range(x.shape[axis])]
    m = structure.m
    moved = np.moveaxis(x, axis, -1)
    out = []
    for idx in np.ndindex(*moved.shape[:-1]):
        row = moved[idx]
        for b in range(row.shape[0] // m):
            out.append(row[b * m : (b + 1) * m])
    return out


def _ref_summarize(signals: dict, params: dict, structure, reductions) -> np.ndarray:
    kernels = [p for p in jax.tree_util.tree_leaves(params) if np.ndim(p) >= 2]
    cols = []
    for name in sorted(signals):
        leaves = [np.asarray(s, np.float64) for s in jax.tree_util.tree_leaves(signals[name])]
        leaves = [s for s in leaves if s.ndim >= 2]
        assert len(leaves) == len(kernels)
        for r in reductions:
            col = [_REF_OPS[r](reg) for x in leaves for reg in _ref_regions(x, structure)]
            cols.append(col)
    return np.asarray(cols, np.float64).T


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_matches_numpy_reference(name):
    structure = STRUCTURES[name]
    rng = np.random.default_rng(sorted(STRUCTURES).index(name))
    shapes = _shapes(rng, structure)
    params = _tree(rng, shapes)
    signals = {"mask": _tree(rng, shapes, "bool"), "gsnr": _tree(rng, shapes)}
    lay = rg.layout(params, structure)
    out = jax.jit(lambda s: rg.summarize(s, lay, rg.REDUCTIONS))(signals)
    expected = _ref_summarize(signals, params, structure, rg.REDUCTIONS)
    names = tuple(f"{s}/{r}" for s in ("gsnr", "mask") for r in rg.REDUCTIONS)
    assert out.feature_names == names
    assert out.features.dtype == jnp.float32
    assert out.features.shape == (lay.num_regions, 2 * len(rg.REDUCTIONS))
    for j, feature in enumerate(names):  # every reduction, on a float and a boolean signal
        np.testing.assert_allclose(
            out.features[:, j], expected[:, j], rtol=1e-4, atol=1e-5, err_msg=feature
        )
    # Eager (unjitted) agrees too.
    eager = rg.summarize(signals, lay, ("mean", "logmean"))
    np.testing.assert_allclose(eager.features, out.features[:, [0, 4, 6, 10]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_layout_fields(name):
    structure = STRUCTURES[name]
    rng = np.random.default_rng(1)
    shapes = _shapes(rng, structure)
    params = _tree(rng, shapes)
    lay = rg.layout(params, structure)
    kernels = ["conv/kernel", "conv1d/kernel", "dense/kernel"]  # flattening order, biases left out
    assert lay.layer_names == tuple(kernels)
    assert lay.num_layers == 3
    counts = [len(_ref_regions(params[k.split("/")[0]]["kernel"], structure)) for k in kernels]
    assert lay.counts == tuple(counts)
    assert lay.num_regions == sum(counts)
    assert lay.offsets == tuple(np.cumsum([0, *counts[:-1]]))
    np.testing.assert_array_equal(lay.layer_index, np.repeat(np.arange(3), counts))
    assert lay.layer_index.dtype == np.int32
    sizes = [
        reg.size
        for k in kernels
        for reg in _ref_regions(params[k.split("/")[0]]["kernel"], structure)
    ]
    np.testing.assert_array_equal(lay.region_size, sizes)
    for k, c in zip(kernels, counts, strict=True):
        shape = shapes[k.split("/")[0]]["kernel"]
        assert rg.num_regions(shape, structure) == c
        ids = rg.region_ids(shape, structure)
        assert ids.shape == shape and ids.dtype == np.int32
        # Region ids agree with the loop reference numbering.
        ref = _ref_regions(np.arange(np.prod(shape)).reshape(shape), structure)
        flat = ids.ravel()
        for r, members in enumerate(ref):
            assert (flat[members] == r).all()
    # Built from shapes only, hashable and equal for arrays or ShapeDtypeStructs.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    lay2 = rg.layout(abstract, structure)
    assert lay2 == lay and hash(lay2) == hash(lay)


def test_per_leaf_structure_tree_and_filter():
    rng = np.random.default_rng(2)
    params = _tree(rng, {"a": {"kernel": (4, 6), "bias": (6,)}, "b": {"kernel": (3, 3, 2, 8)}})
    structure = {"a": {"kernel": Units(), "bias": None}, "b": {"kernel": NM(2, 4)}}
    lay = rg.layout(params, structure)
    assert lay.layer_names == ("a/kernel", "b/kernel")
    assert lay.counts == (6, 3 * 3 * 2 * 2)
    assert lay.structures == (Units(), NM(2, 4))
    prefix = rg.layout(params, {"a": Units(), "b": None})  # one entry for a whole subtree
    assert prefix.layer_names == ("a/kernel",) and prefix.counts == (6,)
    lay_none = rg.layout(params, {"a": {"kernel": None, "bias": None}, "b": {"kernel": Units()}})
    assert lay_none.layer_names == ("b/kernel",)
    # A filter can select 1-D leaves; an explicit structure tree still gives None = unobserved.
    everything = lambda path, leaf: True
    assert rg.layout(params, Unstructured(), everything).layer_names == (
        "a/bias",
        "a/kernel",
        "b/kernel",
    )
    assert rg.layout(params, structure, everything).layer_names == ("a/kernel", "b/kernel")
    # Signals may hold None at unobserved leaves.
    sig = {"a": {"kernel": params["a"]["kernel"], "bias": None}, "b": params["b"]}
    out = rg.summarize({"s": sig}, lay)
    np.testing.assert_allclose(
        out.features[:6, 0], params["a"]["kernel"].mean(axis=0), rtol=1e-5, atol=1e-6
    )


def _mlp(rng):
    return _tree(
        rng, {"Dense_0": {"kernel": (8, 12), "bias": (12,)}, "Conv_0": {"kernel": (3, 3, 4, 8)}}
    )


def test_jit_vmap_and_no_retrace():
    rng = np.random.default_rng(3)
    params = _mlp(rng)
    lay = rg.layout(params, Units())
    reds = ("mean", "std", "logmean")

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(signals):
        return rg.summarize(signals, lay, reds)

    outs = []
    for _ in range(3):
        signals = {"g": _tree(rng, jax.tree.map(np.shape, params)), "m": params}
        out = f(signals)
        eager = rg.summarize(signals, lay, reds)
        np.testing.assert_allclose(out.features, eager.features, rtol=1e-5, atol=1e-6)
        assert out.feature_names == eager.feature_names
        outs.append(out)
    assert {o.features.shape for o in outs} == {(lay.num_regions, 6)}
    np.testing.assert_array_equal(outs[0].layer_index, lay.layer_index)
    np.testing.assert_array_equal(outs[0].size, lay.region_size)

    # The layout may also be a jit argument (a leafless, hashable pytree).
    g = jax.jit(rg.summarize, static_argnames="reductions")
    np.testing.assert_allclose(
        g({"m": params}, lay, reductions=("max",)).features,
        rg.summarize({"m": params}, lay, ("max",)).features,
    )

    # vmap over a batch of signal trees; the layout stays static.
    batch = {"g": _tree(rng, jax.tree.map(lambda x: (5, *np.shape(x)), params))}
    vout = jax.vmap(lambda s: rg.summarize(s, lay, reds))(batch)
    assert vout.features.shape == (5, lay.num_regions, 3)
    for b in range(5):
        single = rg.summarize(jax.tree.map(lambda x, b=b: x[b], batch), lay, reds)
        np.testing.assert_allclose(vout.features[b], single.features, rtol=1e-5, atol=1e-6)


def test_static_shapes_from_abstract_signals():
    rng = np.random.default_rng(4)
    params = _mlp(rng)
    lay = rg.layout(params, NM(2, 4))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), params)
    shape = jax.eval_shape(
        lambda s: rg.summarize(s, lay, rg.REDUCTIONS), {"a": abstract, "b": abstract}
    )
    assert shape.features.shape == (lay.num_regions, 12)
    assert shape.features.dtype == jnp.float32
    assert shape.layer_index.shape == (lay.num_regions,)
    assert shape.layer_index.dtype == jnp.int32
    assert shape.feature_names[:2] == ("a/mean", "a/max")


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_broadcast_round_trip(name):
    structure = STRUCTURES[name]
    rng = np.random.default_rng(5)
    params = _tree(rng, _shapes(rng, structure))
    lay = rg.layout(params, structure)
    v = rng.normal(size=lay.num_regions).astype(np.float32)

    @jax.jit
    def round_trip(v):
        tree = rg.broadcast(v, lay, like=params, fill=-7.0)
        out = rg.summarize({"v": tree}, lay, ("mean", "min", "max", "std"))
        ids = rg.broadcast(jnp.arange(lay.num_regions, dtype=jnp.int32), lay)
        trailing = rg.broadcast(jnp.stack([v, 2 * v], axis=1), lay)
        return tree, out, ids, trailing, rg.broadcast(v > 0, lay)

    tree, out, ids, vt, keep = round_trip(v)
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    chex.assert_trees_all_equal_shapes(tree, params)
    for layer in ("dense", "conv"):
        assert (np.asarray(tree[layer]["bias"]) == -7.0).all()
    np.testing.assert_allclose(out.features[:, 0], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.features[:, 1], v)
    np.testing.assert_array_equal(out.features[:, 2], v)
    np.testing.assert_allclose(out.features[:, 3], 0.0, atol=1e-6)
    # Each weight gets the id of its region: broadcast(arange) == region_ids + offset.
    leaves = jax.tree_util.tree_leaves(ids)
    for k, i in enumerate(lay.observed):
        expected = rg.region_ids(lay.leaf_shapes[i], lay.structures[k]) + lay.offsets[k]
        np.testing.assert_array_equal(leaves[i], expected)
    # Trailing dims and booleans (a keep decision becomes a mask).
    kernel = vt["dense"]["kernel"]
    assert kernel.shape == (*params["dense"]["kernel"].shape, 2)
    np.testing.assert_allclose(kernel[..., 1], 2 * kernel[..., 0])
    assert keep["dense"]["kernel"].dtype == jnp.bool_
    assert not np.asarray(keep["dense"]["bias"]).any()
    # Eager agrees with jit.
    chex.assert_trees_all_close(rg.broadcast(v, lay, fill=-7.0), tree)


def test_layer_summary():
    rng = np.random.default_rng(6)
    params = _mlp(rng)
    lay = rg.layout(params, Units())
    out = rg.summarize({"w": params}, lay, ("mean", "max"))
    per_layer = rg.layer_summary(out, lay)
    assert per_layer.shape == (2, 2)
    kernels = [params["Conv_0"]["kernel"], params["Dense_0"]["kernel"]]
    for layer, k in enumerate(kernels):
        region_means = k.reshape(-1, k.shape[-1]).mean(axis=0)
        region_max = k.reshape(-1, k.shape[-1]).max(axis=0)
        np.testing.assert_allclose(per_layer[layer, 0], region_means.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(per_layer[layer, 1], region_max.mean(), rtol=1e-5, atol=1e-6)
    weighted = rg.layer_summary(out.features[:, 0], lay, weighted=True)
    np.testing.assert_allclose(weighted, [k.mean() for k in kernels], rtol=1e-5, atol=1e-6)
    unstructured = rg.layout(params, {"Conv_0": {"kernel": NM(2, 4)}, "Dense_0": None})
    assert rg.layer_summary(jnp.ones(unstructured.num_regions), unstructured).shape == (1,)


def test_errors():
    rng = np.random.default_rng(7)
    params = _mlp(rng)
    with pytest.raises(ValueError, match=r"leaf 'Conv_0/kernel'.*divisible by m=5"):
        rg.layout(params, NM(2, 5))
    with pytest.raises(ValueError, match=r"leaf 'Dense_0/kernel'.*divisible by m=5"):
        rg.layout(params, {"Dense_0": NM(2, 5), "Conv_0": Units()})
    with pytest.raises(ValueError, match=r"leaf 'Conv_0/kernel'.*out of range"):
        rg.layout(params, Units(axis=4))
    with pytest.raises(TypeError, match="unknown sparsity structure"):
        rg.layout(params, "units")
    with pytest.raises(TypeError, match="unknown sparsity structure"):
        rg.layout(
            params, {"Dense_0": {"kernel": "units", "bias": None}, "Conv_0": {"kernel": None}}
        )
    with pytest.raises(ValueError, match="structure must have the same pytree structure"):
        rg.layout(params, {"Dense_0": {"kernel": Units()}, "Conv_0": {"kernel": None}})
    with pytest.raises(ValueError, match="divisible"):
        rg.num_regions((3, 6), NM(2, 4))
    with pytest.raises(TypeError, match="unknown sparsity structure"):
        rg.region_ids((3, 6), object())

    lay = rg.layout(params, Units())
    bad_shape = jax.tree.map(lambda x: x, params)
    bad_shape["Conv_0"]["kernel"] = np.zeros((3, 3, 4, 9), np.float32)
    with pytest.raises(ValueError, match=r"signals\['g'\] leaf 'Conv_0/kernel' has shape"):
        rg.summarize({"g": bad_shape}, lay)
    missing = {"Dense_0": params["Dense_0"]}
    with pytest.raises(ValueError, match=r"same pytree structure.*Conv_0/kernel"):
        rg.summarize({"g": missing}, lay)
    extra = {**params, "Extra": {"kernel": np.zeros((2, 2))}}
    with pytest.raises(ValueError, match=r"same pytree structure.*Extra/kernel"):
        rg.summarize({"g": extra}, lay)
    none_observed = {"Dense_0": params["Dense_0"], "Conv_0": {"kernel": None}}
    with pytest.raises(ValueError, match=r"None.*'Conv_0/kernel'"):
        rg.summarize({"g": none_observed}, lay)
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        rg.summarize({"g": params}, lay, ("mean", "median"))
    with pytest.raises(ValueError, match=r"expected .* regions"):
        rg.broadcast(np.zeros(lay.num_regions + 1), lay)
    with pytest.raises(ValueError, match="like leaf 'Dense_0/kernel' has shape"):
        rg.broadcast(
            np.zeros(lay.num_regions),
            lay,
            like={**params, "Dense_0": {**params["Dense_0"], "kernel": np.zeros(3)}},
        )


def test_the_package_modules_hold_the_public_names():
    from emrakul.vitals.regions import expansion, geometry, reduction

    assert rg.layout is geometry.layout and rg.RegionLayout is geometry.RegionLayout
    assert rg.num_regions is geometry.num_regions and rg.region_ids is geometry.region_ids
    assert rg.summarize is reduction.summarize and rg.layer_summary is reduction.layer_summary
    assert rg.Regions is reduction.Regions and rg.REDUCTIONS == reduction.REDUCTIONS
    assert rg.broadcast is expansion.broadcast


def test_summarize_then_broadcast_round_trips_units_under_jit_and_vmap():
    params = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(3, 4)}}
    lay = rg.layout(params, Units())

    def per_unit_mean(p):
        regions = rg.summarize({"w": p}, lay)
        return rg.broadcast(regions.features[:, 0], lay)["Dense_0"]["kernel"]

    expected = np.broadcast_to(np.arange(12.0).reshape(3, 4).mean(0), (3, 4))
    np.testing.assert_allclose(jax.jit(per_unit_mean)(params), expected)
    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    got = jax.vmap(per_unit_mean)(batch)
    np.testing.assert_allclose(got, np.stack([expected, 2 * expected]))
