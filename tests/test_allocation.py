"""allocation.reallocate: exact counts at a fixed total, bounds, neutrality, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.masks.select import keep_count
from emrakul.surgery import allocation as al
from emrakul.surgery.budgets import layer_sparsities

SIZES = (2560, 4096, 640)


def reference(base, logits, sizes, floor=1):
    """Slow NumPy water-filling + largest remainder (float64)."""
    base = np.asarray(base, np.float64)
    high = np.asarray(sizes, np.float64)
    low = np.minimum(base, floor)
    w = base * np.exp(np.clip(logits, -30, 30))
    total = base.sum()
    lo_lam, hi_lam = 0.0, 1e300  # bisection on the multiplier of clip(lam * w, low, high)
    for _ in range(3000):
        mid = np.sqrt(lo_lam * hi_lam) if lo_lam > 0 else hi_lam / 2**40
        if np.clip(mid * w, low, high).sum() <= total:
            lo_lam = mid
        else:
            hi_lam = mid
    r = np.clip(lo_lam * w, low, high)
    r = np.clip(r, low, high)
    fl = np.floor(r)
    order = np.argsort(-(np.where(fl < high, r - fl, -1)), kind="stable")
    fl[order[: int(total - fl.sum())]] += 1
    return fl.astype(int)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_zero_logits_keep_the_base_exactly(distribution):
    shapes = [(40, 64), (64, 64), (64, 10)]
    target = layer_sparsities(shapes, 0.95, distribution)
    sizes = tuple(int(np.prod(s)) for s in shapes)
    base = al.base_keep(jnp.asarray(target, jnp.float32), sizes)
    assert base.tolist() == [int(keep_count(t, n)) for t, n in zip(target, sizes, strict=True)]
    keep = jax.jit(lambda lg: al.reallocate(base, lg, sizes))(jnp.zeros(3))
    assert keep.tolist() == base.tolist()
    sp = al.sparsity_of(keep, base, jnp.asarray(target, jnp.float32), sizes)
    assert sp.tolist() == jnp.asarray(target, jnp.float32).tolist()  # bit for bit


def test_random_logits_match_reference_and_keep_the_total():
    rng = np.random.default_rng(0)
    base = al.base_keep(jnp.full((3,), 0.95), SIZES)
    f = jax.jit(lambda lg: al.reallocate(base, lg, SIZES))
    for scale in (0.1, 1.0, 5.0, 40.0):
        for _ in range(50):
            logits = (rng.normal(size=3) * scale).astype(np.float32)
            got = np.asarray(f(logits))
            assert got.sum() == int(base.sum())
            assert (got >= 1).all() and (got <= np.asarray(SIZES)).all()
            assert np.abs(got - reference(np.asarray(base), logits, SIZES)).max() <= 1


def test_sparsity_of_realises_the_counts():
    base = al.base_keep(jnp.full((3,), 0.9), SIZES)
    target = jnp.full((3,), 0.9, jnp.float32)
    keep = al.reallocate(base, jnp.asarray([1.5, -0.5, 0.0]), SIZES)
    sp = al.sparsity_of(keep, base, target, SIZES)
    got = [int(keep_count(s, n)) for s, n in zip(sp, SIZES, strict=True)]
    assert got == keep.tolist()
    assert sum(got) == int(base.sum())


def test_vmap_and_bounds():
    base = al.base_keep(jnp.full((3,), 0.5), SIZES)
    logits = jnp.asarray([[30.0, -30.0, 0.0], [0.0, 0.0, 30.0], [-30.0, -30.0, -30.0]])
    out = jax.vmap(lambda lg: al.reallocate(base, lg, SIZES))(logits)
    assert (out.sum(1) == base.sum()).all()
    assert out[0, 0] == SIZES[0]  # capped at the layer's size, the rest spread over the others
    assert out[1, 2] == SIZES[2]
    assert out[2].tolist() == base.tolist()  # equal logits: the base
