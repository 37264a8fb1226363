"""The vital signs as a table of named statistics: a new one is an entry, added from a test."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul import vitals
from emrakul.vitals import statistics as vs
from emrakul.vitals.state import FIELDS

# A new vital sign, defined here without touching the package: an EMA of |g|.
ABS_GRAD = vitals.Statistic(
    "abs_grad", vs.zeros_like_stat, lambda ctx: vs.ema(ctx, "abs_grad", jnp.abs(ctx.grad))
)
TABLE = (*vitals.STATISTICS, ABS_GRAD)


def _params():
    return {"a": jnp.ones((3, 4), jnp.float32), "b": jnp.ones((4,), jnp.bfloat16)}


def _grads(rng, params):
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _same(x, y):
    return all(
        np.asarray(a).tobytes() == np.asarray(b).tobytes() and a.dtype == b.dtype
        for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)
    )


def test_default_table_covers_the_state_fields():
    assert tuple(s.name for s in vitals.STATISTICS) == FIELDS
    st = vitals.init(_params())
    assert st.extra == {}
    for name in FIELDS:
        assert st.statistic(name) is getattr(st, name)


def test_new_statistic_is_kept_and_updated_like_a_reference():
    rng = np.random.default_rng(0)
    params = _params()
    st = vitals.init(params, TABLE)
    assert set(st.extra) == {"abs_grad"}
    assert st.extra["abs_grad"]["b"].dtype == jnp.float32  # the statistics dtype rule
    update = jax.jit(functools.partial(vitals.update, statistics=TABLE))
    ref = {k: np.zeros(p.shape) for k, p in params.items()}
    base = vitals.init(params)
    decays = [0.9, 0.5, 0.8]
    for d in decays:
        g = _grads(rng, params)
        st = update(st, params, g, decay=d)
        base = jax.jit(vitals.update)(base, params, g, decay=d)
        for k in ref:
            ref[k] = d * ref[k] + (1 - d) * np.abs(np.asarray(g[k], np.float32))
    for k in ref:
        np.testing.assert_allclose(st.statistic("abs_grad")[k], ref[k], rtol=1e-6)
    # The built-in statistics are unchanged by the extra entry, bit for bit.
    for name in FIELDS:
        assert _same(getattr(st, name), getattr(base, name))
    # Bias correction works for any EMA entry by name.
    corr = vitals.corrected(st, "abs_grad")
    np.testing.assert_allclose(corr["a"], ref["a"] / (1 - np.prod(decays)), rtol=1e-5)


def test_new_statistic_skips_nonfinite_leaves_and_vmaps():
    params = {"a": jnp.ones((5,)), "b": jnp.ones((2, 2))}
    grads = {"a": jnp.full((5,), 2.0).at[1].set(jnp.nan), "b": jnp.full((2, 2), -3.0)}
    st = vitals.update(vitals.init(params, TABLE), params, grads, decay=0.5, statistics=TABLE)
    assert int(st.nonfinite) == 1
    np.testing.assert_array_equal(st.extra["abs_grad"]["a"], np.zeros(5))
    np.testing.assert_allclose(st.extra["abs_grad"]["b"], np.full((2, 2), 1.5))

    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), params)
    states = jax.vmap(lambda p: vitals.init(p, TABLE))(stacked)
    g = jax.tree.map(lambda x: jnp.stack([jnp.ones_like(x), 2 * jnp.ones_like(x)]), params)
    out = jax.vmap(functools.partial(vitals.update, decay=0.5, statistics=TABLE))(
        states, stacked, g
    )
    np.testing.assert_allclose(out.extra["abs_grad"]["a"][:, 0], [0.5, 1.0])


def test_changes_limits_where_a_statistic_is_updated():
    last_big = vitals.Statistic(
        "last_big", vs.zeros_like_stat, lambda ctx: ctx.grad, lambda ctx: jnp.abs(ctx.grad) > 1
    )
    table = (*vitals.STATISTICS, last_big)
    params = {"w": jnp.ones((4,))}
    st = vitals.init(params, table)
    for g in ([2.0, 0.5, -3.0, 0.0], [0.1, 5.0, 0.2, 0.0]):
        st = vitals.update(st, params, {"w": jnp.asarray(g)}, statistics=table)
    np.testing.assert_array_equal(st.extra["last_big"]["w"], [2.0, 5.0, -3.0, 0.0])


def test_update_leaves_keeps_the_positional_leaf_contract():
    params = {"w": jnp.ones((3,))}
    st = vitals.init(params)
    seen = []

    def leaf_update(m, v, fr, last, age, debias, w, g, mask):
        seen.append(mask)
        return m + g, v, fr, last, age, debias, jnp.bool_(True)

    out = vitals.state.update_leaves(st, params, {"w": jnp.ones(3)}, None, leaf_update)
    assert seen == [None] and int(out.count) == 1 and int(out.nonfinite) == 0
    np.testing.assert_array_equal(out.grad_mean["w"], np.ones(3))


def test_bad_tables_and_states_are_named():
    params = _params()
    with pytest.raises(ValueError, match=r"unique"):
        vitals.init(params, (*vitals.STATISTICS, vitals.STATISTICS[0]))
    with pytest.raises(ValueError, match=r"missing \['age'\]"):
        vitals.init(params, tuple(s for s in vitals.STATISTICS if s.name != "age"))
    with pytest.raises(ValueError, match=r"reserved"):
        vitals.init(params, (*vitals.STATISTICS, ABS_GRAD._replace(name="count")))
    with pytest.raises(TypeError, match=r"must be Statistic"):
        vitals.init(params, (*vitals.STATISTICS, ("abs_grad", None, None)))
    with pytest.raises(ValueError, match=r"state.extra holds statistics \[\]"):
        vitals.update(vitals.init(params), params, params, statistics=TABLE)
    with pytest.raises(ValueError, match=r"table adds \[\]"):
        vitals.update(vitals.init(params, TABLE), params, params)
    with pytest.raises(KeyError, match=r"no statistic 'nope'"):
        vitals.init(params).statistic("nope")
    with pytest.raises(KeyError, match=r"no statistic 'abs_grad'"):
        vitals.corrected(vitals.init(params), "abs_grad")
    bad = vitals.init(params, TABLE)
    bad = bad._replace(extra={"abs_grad": {"a": bad.extra["abs_grad"]["a"]}})
    with pytest.raises(ValueError, match=r"state.extra\['abs_grad'\] must have the same pytree"):
        vitals.update(bad, params, params, statistics=TABLE)
