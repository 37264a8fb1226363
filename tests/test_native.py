"""The optional native top-k kernel: big rows, dispatch, and the fallback when it cannot build.

``tests/test_topk.py`` already runs every ``topk_mask`` test on the native kernel as well; these
tests cover what needs rows longer than its compaction cap (8192 entries in the bracket), the
platform dispatch, the build cache, and the behaviour without a compiler.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ref_topk

from emrakul.masks import native, topk, topk_mask


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The kernel built once for this module (skips where there is no compiler); builds go to
    a temporary cache, not the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EMRAKUL_CACHE_DIR", str(tmp_path_factory.mktemp("native")))
    if not native.available():
        mp.undo()
        pytest.skip(f"native kernel {native.status()}")
    yield
    mp.undo()


@pytest.fixture
def use_native(built):
    assert native.enable()
    yield
    native.enable(False)


def xla_topk(x, k, axis=None):
    """The XLA implementation (tested against the NumPy reference in test_topk.py)."""
    return np.asarray(
        jax.jit(topk_mask, static_argnums=2, static_argnames="impl")(x, k, axis, impl="xla")
    )


def big_scores(rng, n, kind):
    if kind == "normal":
        x = rng.normal(size=n)
    elif kind == "ties":
        x = rng.integers(-20, 20, size=n).astype(float)
    elif kind == "rigl_keep":  # |w| on 10% active entries, the rest -inf
        x = np.where(rng.random(n) < 0.1, np.abs(rng.normal(size=n)), -np.inf)
    elif kind == "rigl_grow":  # |g| on the inactive entries, many exact zeros among them
        x = np.abs(rng.normal(size=n)) * (rng.random(n) < 0.7)
        x[rng.random(n) < 0.1] = -np.inf
    elif kind == "near_zero":  # heavy ties at 0 among values the CPU may flush to zero
        tiny = np.finfo(np.float32).tiny
        x = rng.choice(np.array([0.0, tiny, 1.5 * tiny, -tiny, 1e-30, 1.0]), size=n)
    elif kind == "special":
        x = rng.normal(size=n) * 10.0 ** rng.integers(-44, 30, size=n)
        for v, p in [(np.nan, 0.1), (np.inf, 0.1), (-np.inf, 0.1), (-0.0, 0.1), (0.0, 0.1)]:
            x[rng.random(n) < p] = v
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


@pytest.mark.parametrize(
    "kind", ["normal", "ties", "rigl_keep", "rigl_grow", "near_zero", "special"]
)
def test_big_rows_match_xla(rng, use_native, kind):
    f = jax.jit(topk_mask)
    for n in [9_000, 70_000]:
        x = big_scores(rng, n, kind)
        for k in [1, 77, n // 50, n // 10, n // 2, n - 3]:
            got = np.asarray(f(x, k))
            np.testing.assert_array_equal(got, xla_topk(x, k), err_msg=f"{kind} n={n} k={k}")
            assert got.sum() == k


def test_big_row_matches_reference(rng, use_native):
    x = big_scores(rng, 30_000, "ties")
    for k in [5, 12_345]:
        np.testing.assert_array_equal(np.asarray(topk_mask(x, k)), ref_topk(x, k))


def test_rows_and_vmap(rng, use_native):
    x = np.stack([big_scores(rng, 20_000, kind) for kind in ["normal", "rigl_keep", "ties"]])
    ks = np.array([0, 1_500, 20_000])
    got = np.asarray(jax.jit(topk_mask, static_argnums=2)(x, jnp.asarray(ks), 1))
    np.testing.assert_array_equal(got, xla_topk(x, jnp.asarray(ks), 1))
    # vmap with one k for every member (the custom call broadcasts it) and with one k each
    shared = np.asarray(jax.jit(jax.vmap(topk_mask, in_axes=(0, None)))(x, 999))
    np.testing.assert_array_equal(shared, xla_topk(x, 999, 1))
    each = np.asarray(jax.jit(jax.vmap(topk_mask))(x, jnp.asarray(ks)))
    np.testing.assert_array_equal(each, got)


def test_grad_and_jvp_through_native(rng, use_native):
    """Differentiating through a masked product works as with the XLA version."""
    w = jnp.asarray(rng.normal(size=(3000,)), jnp.float32)

    def f(w, impl):
        return jnp.sum(w**2 * topk_mask(jnp.abs(w), 300, impl=impl))

    g_native = jax.jit(jax.grad(f), static_argnums=1)(w, "native")
    np.testing.assert_array_equal(g_native, jax.grad(f)(w, "xla"))
    assert int(jnp.sum(g_native != 0)) == 300
    _, t = jax.jvp(lambda w: f(w, None), (w,), (jnp.ones_like(w),))
    np.testing.assert_allclose(t, jnp.sum(g_native), rtol=1e-5)


def test_dispatch_by_platform_and_flag(rng, built):
    x = jnp.asarray(rng.normal(size=(500,)), jnp.float32)
    f = jax.jit(topk_mask)
    assert native.TARGET not in f.lower(x, 3).as_text()  # not enabled: XLA
    native.enable()
    try:
        assert native.TARGET in jax.jit(topk_mask).lower(x, 3).as_text()
        # The same program exported for a GPU keeps the XLA version.
        exported = jax.export.export(jax.jit(topk_mask), platforms=["cuda"])(x, 3)
        assert native.TARGET not in exported.mlir_module()
    finally:
        native.enable(False)


def test_impl_argument(rng, built):
    x = rng.normal(size=(2, 900)).astype(np.float32)
    lower = lambda impl: jax.jit(topk_mask, static_argnames="impl").lower(x, 9, impl=impl).as_text()
    assert native.TARGET in lower("native")
    assert native.TARGET not in lower("xla")
    np.testing.assert_array_equal(topk_mask(x, 9, impl="native"), topk_mask(x, 9, impl="xla"))
    np.testing.assert_array_equal(
        topk_mask(x, 5, axis=1, impl="native"), topk_mask(x, 5, axis=1, impl="xla")
    )
    with pytest.raises(ValueError, match="impl must be"):
        topk_mask(x, 3, impl="fast")


def test_build_without_avx512_matches(rng, built):
    """The portable path (no AVX-512 compaction) of the same source, on other CPUs."""
    import ctypes
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 only")
    flags = (*(f for f in native._FLAGS if not f.startswith("-march")), "-march=x86-64-v2")
    lib = ctypes.cdll.LoadLibrary(native._build(flags))
    target = "emrakul_topk_mask_test_portable"
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(lib.EmrakulTopkMask), platform="cpu")
    call = jax.jit(
        lambda x, k: jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(x.shape, jnp.bool_))(x, k)
    )
    for kind in ["normal", "ties", "rigl_keep", "special"]:
        x = jnp.asarray(big_scores(rng, 20_000, kind))
        rows = topk._as_float(x).reshape(1, -1)
        for k in [3, 2_000, 19_990]:
            got = np.asarray(call(rows, jnp.full((1,), k, jnp.int32))).reshape(x.shape)
            np.testing.assert_array_equal(got, xla_topk(x, k), err_msg=f"{kind} k={k}")


def test_config_switch(built):
    from emrakul.lab.config import apply_runtime_options
    from experiments.configs import default

    config = default.get_config()
    try:
        apply_runtime_options(config)  # native_topk defaults to False: nothing changes
        assert not native.enabled()
        config.run.native_topk = True
        apply_runtime_options(config)
        assert native.enabled()
        config.run.native_topk = False
        apply_runtime_options(config)  # False leaves the current setting alone
        assert native.enabled()
    finally:
        native.enable(False)


def test_warns_on_a_mesh_with_vmapped_seeds(built):
    from emrakul.lab import runner, sharding

    mesh = sharding.seed_mesh()
    runner._warn_native_on_mesh(mesh, "vmap")  # switch off: nothing to say
    try:
        native.enable()
        with pytest.warns(UserWarning, match="no sharding rule"):
            runner._warn_native_on_mesh(mesh, "vmap")
        runner._warn_native_on_mesh(mesh, "map")
        runner._warn_native_on_mesh(None, "vmap")
    finally:
        native.enable(False)


def test_cache_is_reused(built):
    path = native._build()
    mtime = os.path.getmtime(path)
    assert native._build() == path
    assert os.path.getmtime(path) == mtime


def test_without_compiler_falls_back(rng, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setitem(native._state, "built", None)
    monkeypatch.setitem(native._state, "status", "not built yet")
    monkeypatch.setitem(native._state, "enabled", False)
    assert not native.enable()
    assert not native.enabled()
    assert native.status().startswith("unavailable: RuntimeError: no C++ compiler: $CXX=")
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler"):
        native.enable(strict=True)
    with pytest.raises(RuntimeError, match=r"impl='native'.*no C\+\+ compiler"):
        topk_mask(jnp.ones(5), 2, impl="native")
    x = rng.normal(size=(300,)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(topk_mask(x, 40)), ref_topk(x, 40))


def test_compile_error_is_reported(monkeypatch, tmp_path):
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(native, "_SOURCE", str(bad))
    monkeypatch.setenv("EMRAKUL_CACHE_DIR", str(tmp_path / "cache"))
    try:
        native._compiler()
    except RuntimeError:
        pytest.skip("no C++ compiler")
    with pytest.raises(RuntimeError, match=r"compiling .*bad\.cc failed"):
        native._build()
    assert os.listdir(tmp_path / "cache") == []  # no partial library left behind
