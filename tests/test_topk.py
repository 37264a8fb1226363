"""topk_mask against a slow NumPy reference, under jit and vmap, and its bad inputs.

Every test runs twice: with the XLA implementation and with the optional native CPU kernel
(:mod:`emrakul.masks.native`; skipped where no C++ compiler can build it).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ref_topk

from emrakul.masks import native, topk_mask


@pytest.fixture(autouse=True, params=["xla", "native"])
def implementation(request, tmp_path_factory):
    """Runs the test with ``topk_mask`` on XLA, then on the native kernel; checks in the lowered
    program that the intended one runs, and always leaves the native switch off."""
    lowered = lambda: jax.jit(topk_mask).lower(jnp.ones(3), 1).as_text()
    try:
        if request.param == "native":
            if native.status() == "not built yet":  # one cache per test session and process
                mp = pytest.MonkeyPatch()
                mp.setenv("EMRAKUL_CACHE_DIR", str(tmp_path_factory.mktemp("native")))
                native.available()
                mp.undo()
            if not native.enable():
                pytest.skip(f"native kernel {native.status()}")
            assert native.TARGET in lowered()
        else:
            native.enable(False)
            assert native.TARGET not in lowered()
        yield request.param
    finally:
        native.enable(False)


def random_scores(rng: np.random.Generator, shape, kind: str) -> np.ndarray:
    n = int(np.prod(shape))
    if kind == "normal":
        x = rng.normal(size=n)
    elif kind == "ties":
        x = rng.integers(-3, 3, size=n).astype(float)
    elif kind == "negative":
        x = -np.abs(rng.normal(size=n)) * 1e3
    elif kind == "equal":
        x = np.full(n, 0.5)
    elif kind == "special":
        x = rng.normal(size=n)
        x[rng.random(n) < 0.15] = np.nan
        x[rng.random(n) < 0.15] = np.inf
        x[rng.random(n) < 0.15] = -np.inf
        x[rng.random(n) < 0.15] = -0.0
        x[rng.random(n) < 0.1] = 0.0
    elif kind == "magnitude":  # many exact zeros, as |w| of a pruned layer
        x = np.abs(rng.normal(size=n)) * (rng.random(n) < 0.3)
    elif kind == "wide":  # spans many binades
        x = rng.normal(size=n) * 10.0 ** rng.integers(-30, 30, size=n)
    else:
        raise ValueError(kind)
    return x.astype(np.float32).reshape(shape)


KINDS = ["normal", "ties", "negative", "equal", "special", "magnitude", "wide"]


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(rng, kind):
    f = jax.jit(topk_mask)
    for shape in [(1,), (7,), (5, 13), (3, 4, 9), (300,), (2000,)]:
        x = random_scores(rng, shape, kind)
        n = x.size
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n, int(rng.integers(0, n + 1))}):
            k = max(0, min(k, n))
            got = np.asarray(f(x, k))
            np.testing.assert_array_equal(got, ref_topk(x, k), err_msg=f"{kind} {shape} k={k}")
            assert got.sum() == k


def test_large_exact_count(rng):
    x = rng.normal(size=200_000).astype(np.float32)
    for k in [0, 1, 12_345, 100_000, 199_999, 200_000]:
        m = np.asarray(jax.jit(topk_mask)(x, k))
        assert m.sum() == k
        if 0 < k < x.size:
            assert x[m].min() >= x[~m].max()


def test_dtypes(rng):
    x = rng.normal(size=(64,)).astype(np.float32)
    for dt in [jnp.bfloat16, jnp.float16, jnp.float32]:
        xd = jnp.asarray(x, dt)
        np.testing.assert_array_equal(topk_mask(xd, 10), ref_topk(np.asarray(xd, np.float32), 10))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_axis_matches_per_row_reference(rng, axis):
    x = random_scores(rng, (6, 40), "ties")
    moved = np.moveaxis(x, axis, -1)
    ks = rng.integers(0, moved.shape[-1] + 1, size=moved.shape[:-1])
    got = np.moveaxis(np.asarray(topk_mask(x, jnp.asarray(ks), axis=axis)), axis, -1)
    for r in range(moved.shape[0]):
        np.testing.assert_array_equal(got[r], ref_topk(moved[r], int(ks[r])))
    scalar = np.moveaxis(np.asarray(topk_mask(x, 3, axis=axis)), axis, -1)
    assert (scalar.sum(-1) == 3).all()


def test_axis_on_conv_kernel(rng):
    w = random_scores(rng, (3, 3, 4, 8), "normal")
    m = np.asarray(topk_mask(w, 3, axis=2))
    assert (m.sum(axis=2) == 3).all()
    np.testing.assert_array_equal(m[1, 2, :, 5], ref_topk(w[1, 2, :, 5], 3))


def test_jit_does_not_retrace_for_new_k(rng):
    chex.clear_trace_counter()  # the test runs once per implementation
    x = jnp.asarray(rng.normal(size=(100,)), jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, k):
        return topk_mask(x, k)

    for k in [0, 5, 50, 100]:
        assert int(f(x, k).sum()) == k


def test_vmap_over_scores_and_k(rng):
    x = random_scores(rng, (5, 64), "ties")
    ks = np.array([0, 3, 17, 63, 64])
    got = np.asarray(jax.jit(jax.vmap(topk_mask))(x, ks))
    for i in range(5):
        np.testing.assert_array_equal(got[i], ref_topk(x[i], int(ks[i])))


def test_traced_k_is_clipped(rng):
    x = jnp.asarray(rng.normal(size=(10,)), jnp.float32)
    g = jax.jit(lambda x, k: topk_mask(x, k + 0))
    assert int(g(x, jnp.int32(-3)).sum()) == 0
    assert int(g(x, jnp.int32(99)).sum()) == 10


def test_bad_inputs():
    x = jnp.arange(10.0)
    with pytest.raises(ValueError, match=r"k must lie in \[0, 10\]"):
        topk_mask(x, 11)
    with pytest.raises(ValueError, match="k must lie"):
        topk_mask(x, -1)
    with pytest.raises(TypeError, match="floating"):
        topk_mask(jnp.arange(10), 3)
    with pytest.raises(TypeError, match="integer"):
        topk_mask(x, 2.5)
    with pytest.raises(ValueError, match="does not broadcast"):
        topk_mask(jnp.ones((3, 4)), jnp.array([1, 2]), axis=1)


@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
def test_xla_row_kernel_matches_reference_under_jit_and_vmap(rng, kind):
    """The XLA row kernel, called directly: the same under either native switch (both run)."""
    from emrakul.masks import threshold_search, topk

    assert topk._select_rows is threshold_search.select_rows
    x = np.stack([random_scores(rng, (600,), kind) for _ in range(4)])
    k = np.array([0, 1, 250, 600], np.int32)
    rows = topk._as_float(x)
    got = np.asarray(jax.jit(threshold_search.select_rows)(rows, k))
    for r in range(4):
        np.testing.assert_array_equal(got[r], ref_topk(x[r], int(k[r])), err_msg=f"row {r}")
    one_row = lambda row, kr: threshold_search.select_rows(row[None], kr[None])[0]
    np.testing.assert_array_equal(np.asarray(jax.vmap(one_row)(rows, jnp.asarray(k))), got)
