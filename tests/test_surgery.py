"""surgery.operate against a slow NumPy reference; budgets (uniform / ERK); anesthesia."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul import masks
from emrakul.controllers.base import Decision
from emrakul.masks import NM, Units, Unstructured
from emrakul.surgery import lifecycle
from emrakul.surgery.anesthesia import anesthetize, recover
from emrakul.surgery.budgets import layer_sparsities
from emrakul.surgery.lifecycle import ALIVE, LYSED, NEVER, SEDATED, Lifecycle
from emrakul.surgery.operate import operate

STRUCTURES = (Unstructured(), NM(None, 4, -1), NM(2, 4, 0), Units(-1))
SHAPES = {"dense": (8, 12), "nm": (6, 8), "nm_fixed": (8, 6), "conv": (3, 3, 4, 5)}
# Flattening order of the params dict is alphabetical: conv, dense, nm, nm_fixed.
ORDER = ("conv", "dense", "nm", "nm_fixed")
STRUCT_OF = {"dense": Unstructured(), "nm": NM(None, 4, -1), "nm_fixed": NM(2, 4, 0)}
STRUCT_OF["conv"] = Units(-1)
LAYER_STRUCTURES = tuple(STRUCT_OF[k] for k in ORDER)


def f32(x):
    return np.float32(x)


# ----------------------------------------------------------------------------- NumPy reference


def _round(x):
    return int(np.round(np.float32(x)))


def _top(indices, key, k):
    return sorted(indices, key=key)[: max(int(k), 0)]


def ref_layer(
    state, changed_at, param, drop, grow, sp, churn, go, step, cooldown, structure, drop_to, regrow
):
    """Obviously correct per-layer surgery, written from the operate docstring."""
    shape = state.shape
    n = state.size
    alive = state == ALIVE
    since = step - changed_at.astype(np.int64)
    locked = since < cooldown
    can_enter = ~alive & ~locked & ((state == SEDATED) | ((state == LYSED) & regrow))
    drop = drop.astype(np.float64)
    if isinstance(structure, Unstructured):
        a, lk, ce = alive.ravel(), locked.ravel(), can_enter.ravel()
        d, g = drop.ravel(), grow.ravel()
        n_alive = int(a.sum())
        n_target = n - _round(f32(sp) * f32(n))
        n_churn = max(_round(f32(churn) * f32(n_alive)), 0)
        k1 = max(min(n_alive, n_target) - n_churn, int((a & lk).sum()))
        kept = np.zeros(n, bool)
        kept[_top(np.flatnonzero(a), lambda i: (not lk[i], -d[i], i), k1)] = True
        cand = (a | ce) & ~kept
        k2 = min(max(n_target - int(kept.sum()), 0), int(cand.sum()))
        new = kept.copy()
        new[_top(np.flatnonzero(cand), lambda i: (-g[i], i), k2)] = True
        new_alive = new.reshape(shape)
    else:
        locked_alive = alive & locked
        barred = ~alive & ~can_enter
        if isinstance(structure, NM):
            m = structure.m
            keep = m - _round(f32(sp) * f32(m)) if structure.n is None else structure.n
            score = np.where(locked_alive, np.inf, np.where(barred, -np.inf, drop))
            moved = np.moveaxis(score, structure.axis, -1)
            chosen = np.zeros(moved.shape, bool)
            for idx in np.ndindex(*moved.shape[:-1]):
                for g0 in range(0, moved.shape[-1], m):
                    block = moved[idx][g0 : g0 + m]
                    for i in _top(range(m), lambda i, b=block: (-b[i], i), keep):
                        chosen[(*idx, g0 + i)] = True
            chosen = np.moveaxis(chosen, -1, structure.axis)
        else:
            ax = structure.axis % state.ndim
            la, ba, dm = (np.moveaxis(x, ax, 0) for x in (locked_alive, barred, drop))
            units = la.shape[0]
            unit_score = [
                np.inf if la[u].any() else -np.inf if ba[u].all() else drop_sum
                for u, drop_sum in enumerate(np.where(ba, 0.0, dm).reshape(units, -1).sum(1))
            ]
            keep = units - _round(f32(sp) * f32(units))
            sel = np.zeros(units, bool)
            sel[_top(range(units), lambda u: (-unit_score[u], u), keep)] = True
            chosen = np.moveaxis(
                np.broadcast_to(sel.reshape(-1, *[1] * (state.ndim - 1)), la.shape), 0, ax
            )
        new_alive = (alive & (chosen | locked)) | (~alive & chosen & can_enter)
    left = alive & ~new_alive & go
    entered = ~alive & new_alive & go
    changed = left | entered
    new_state = np.where(left, drop_to, np.where(entered, ALIVE, state)).astype(np.int8)
    lysed_now = left & (drop_to == LYSED)
    return dict(
        state=new_state,
        changed_at=np.where(changed, step, changed_at).astype(np.int32),
        param=np.where(lysed_now, 0.0, param).astype(np.float32),
        reset=lysed_now | (entered & (state == LYSED)),
        changes=int(changed.sum()),
        reversals=int((changed & (since < 2 * cooldown)).sum()),
        cut=left.sum() / max(alive.sum(), 1),
        grown=entered.sum() / n,
    )


# ----------------------------------------------------------------------------- random inputs


def make_case(rng, step, cooldown, p_state=(0.6, 0.25, 0.15)):
    params, state, changed = {}, {}, {}
    for name, shape in SHAPES.items():
        params[name] = {"kernel": rng.normal(size=shape).astype(np.float32), "bias": np.ones(3)}
        s = rng.choice([ALIVE, SEDATED, LYSED], size=shape, p=p_state).astype(np.int8)
        state[name] = {"kernel": s, "bias": np.int8(ALIVE)}
        c = rng.integers(step - 3 * max(cooldown, 1), step + 1, size=shape)
        c = np.where(rng.random(shape) < 0.5, NEVER, c).astype(np.int32)
        changed[name] = {"kernel": c, "bias": np.int32(NEVER)}
    life = Lifecycle(state, changed, np.zeros(4, np.int32), np.zeros(4, np.int32))
    return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, life)


def make_decision(rng, params, sparsity, churn, go=True):
    score = lambda p: jnp.asarray(rng.normal(size=np.shape(p)), jnp.float32)
    return Decision(
        sparsity=jnp.asarray(sparsity, jnp.float32),
        churn=jnp.asarray(churn, jnp.float32),
        drop_score=jax.tree.map(score, params),
        grow_score=jax.tree.map(score, params),
        operate=jnp.asarray(go),
    )


def _operate(life, decision, params, step, cooldown, drop_to, regrow):
    kw = dict(structures=LAYER_STRUCTURES, drop_to=drop_to, regrow_lysed=regrow)
    return operate(life, decision, params, step, cooldown=cooldown, **kw)


_run_static = jax.jit(_operate, static_argnames=("drop_to", "regrow"))


@jax.jit
@chex.assert_max_traces(n=1)
def _operate_sedate(life, decision, params, step, cooldown):
    return _operate(life, decision, params, step, cooldown, SEDATED, False)


def run_operate(life, decision, params, step, cooldown, drop_to, regrow):
    """Jitted operate; (SEDATED, False) goes through one function that must never retrace."""
    if (drop_to, regrow) == (SEDATED, False):
        return _operate_sedate(life, decision, params, step, cooldown)
    return _run_static(life, decision, params, step, cooldown, drop_to=drop_to, regrow=regrow)


def check_against_reference(life, decision, params, step, cooldown, drop_to, regrow, out):
    leaf = lambda t, k: np.asarray(t[k]["kernel"])
    for j, name in enumerate(ORDER):
        want = ref_layer(
            leaf(life.state, name),
            leaf(life.changed_at, name),
            leaf(params, name),
            leaf(decision.drop_score, name),
            leaf(decision.grow_score, name),
            float(decision.sparsity[j]),
            float(decision.churn[j]),
            bool(decision.operate),
            int(step),
            int(cooldown),
            STRUCT_OF[name],
            drop_to,
            regrow,
        )
        msg = f"layer {name}"
        np.testing.assert_array_equal(leaf(out.life.state, name), want["state"], msg)
        np.testing.assert_array_equal(leaf(out.life.changed_at, name), want["changed_at"], msg)
        np.testing.assert_array_equal(leaf(out.params, name), want["param"], msg)
        np.testing.assert_array_equal(leaf(out.reset, name), want["reset"], msg)
        assert int(out.life.changes[j] - life.changes[j]) == want["changes"], msg
        assert int(out.life.reversals[j] - life.reversals[j]) == want["reversals"], msg
        np.testing.assert_allclose(float(out.cut[j]), want["cut"], rtol=1e-6, err_msg=msg)
        np.testing.assert_allclose(float(out.grown[j]), want["grown"], rtol=1e-6, err_msg=msg)
        # Unpruned leaves: untouched, scalar False reset marker.
        np.testing.assert_array_equal(out.params[name]["bias"], params[name]["bias"])
        assert out.reset[name]["bias"].shape == () and not bool(out.reset[name]["bias"])


# ----------------------------------------------------------------------------- operate


@pytest.mark.parametrize(
    "drop_to,regrow", [(LYSED, False), (LYSED, True), (SEDATED, False)], ids=str
)
def test_operate_matches_reference(rng, drop_to, regrow):
    for trial in range(24):
        step = int(rng.integers(0, 500))
        cooldown = int(rng.choice([0, 5, 20]))
        params, life = make_case(rng, step, cooldown)
        sparsity = rng.choice([0.0, 0.3, 0.5, 0.77, 0.95, 1.0], size=4)
        churn = rng.choice([0.0, 0.1, 0.3, 1.0], size=4) * (trial % 3 > 0)
        decision = make_decision(rng, params, sparsity, churn)
        out = run_operate(life, decision, params, step, cooldown, drop_to, regrow)
        check_against_reference(life, decision, params, step, cooldown, drop_to, regrow, out)


def test_unstructured_counts_exact_when_feasible(rng):
    n_checked = 0
    for _ in range(20):
        step, cooldown = 100, int(rng.choice([0, 10, 40]))
        params, life = make_case(rng, step, cooldown)
        sp = float(rng.choice([0.2, 0.5, 0.8]))
        decision = make_decision(rng, params, [sp] * 4, [float(rng.choice([0.0, 0.3]))] * 4)
        out = run_operate(life, decision, params, step, cooldown, LYSED, True)
        s = np.asarray(life.state["dense"]["kernel"])
        locked = step - np.asarray(life.changed_at["dense"]["kernel"]) < cooldown
        n, target = s.size, s.size - round(sp * s.size)
        lo = int((locked & (s == ALIVE)).sum())
        hi = int((~locked | (s == ALIVE)).sum())  # regrow_lysed: every unlocked weight may live
        new = np.asarray(out.life.state["dense"]["kernel"])
        if lo <= target <= hi:
            n_checked += 1
            assert int((new == ALIVE).sum()) == target
        assert np.all(new[locked] == s[locked])  # locked weights never change
        assert n == 96
    assert n_checked > 10


def test_churn_swaps_but_keeps_count(rng):
    """RigL-style swap: all alive, target = current; churn drops and regrows the same number."""
    step = 50
    params, life = make_case(rng, step, 0, p_state=(0.5, 0.0, 0.5))
    decision = make_decision(rng, params, [0.5] * 4, [0.25] * 4)
    before = np.asarray(life.state["dense"]["kernel"])
    out = run_operate(life, decision, params, step, 0, LYSED, True)
    after = np.asarray(out.life.state["dense"]["kernel"])
    assert (after == ALIVE).sum() == 48
    assert ((before == ALIVE) & (after != ALIVE)).sum() > 0  # really swapped
    # Regrown lysed weights restart from 0 with reset moments.
    regrown = (before == LYSED) & (after == ALIVE)
    assert np.all(np.asarray(out.reset["dense"]["kernel"])[regrown])


def test_operate_false_changes_nothing(rng):
    params, life = make_case(rng, 10, 5)
    decision = make_decision(rng, params, [0.9] * 4, [0.3] * 4, go=False)
    out = run_operate(life, decision, params, 10, 5, LYSED, True)
    chex.assert_trees_all_equal(out.life, life)
    chex.assert_trees_all_equal(out.params, params)
    assert not any(bool(jnp.any(r)) for r in jax.tree.leaves(out.reset))
    assert float(jnp.sum(out.cut)) == 0 and float(jnp.sum(out.grown)) == 0


def test_reversals_count_flip_flops(rng):
    """An alive weight lysed at step 0 and regrown at step 12 with cooldown 10 is a reversal."""
    params = {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)}
    life = lifecycle.init(masks.init(params))
    ones = {"w": jnp.ones((4, 5), jnp.float32)}
    dec = Decision(jnp.array([0.5]), jnp.zeros(1), params, ones, jnp.asarray(True))
    kw = dict(structures=(Unstructured(),), drop_to=LYSED, regrow_lysed=True)
    op = jax.jit(
        lambda life, dec, params, step: operate(life, dec, params, step, cooldown=10, **kw)
    )
    out = op(life, dec, params, 0)
    assert int(out.life.changes[0]) == 10 and int(out.life.reversals[0]) == 0
    np.testing.assert_array_equal(
        out.params["w"], np.where(out.life.state["w"] == 0, params["w"], 0)
    )
    # Ask for everything back at step 5: locked (cooldown 10), nothing changes.
    dec = dec._replace(sparsity=jnp.array([0.0]))
    out5 = op(out.life, dec, out.params, 5)
    assert int(out5.life.changes[0]) == 10
    out12 = op(out.life, dec, out.params, 12)
    assert int(out12.life.changes[0]) == 20 and int(out12.life.reversals[0]) == 10
    assert float(out12.grown[0]) == 0.5 and bool(jnp.all(out12.life.state["w"] == ALIVE))
    out30 = op(out.life, dec, out.params, 30)
    assert int(out30.life.reversals[0]) == 0


def test_operate_vmap_matches_single(rng):
    params, life = make_case(rng, 100, 10)
    decs = [make_decision(rng, params, rng.random(4) * 0.9, rng.random(4) * 0.5) for _ in range(3)]
    batched = jax.tree.map(lambda *x: jnp.stack(x), *decs)
    steps = jnp.array([100, 105, 130])
    vmapped = jax.vmap(_operate, in_axes=(None, 0, None, 0, None, None, None))
    out = jax.jit(vmapped, static_argnums=(5, 6))(life, batched, params, steps, 10, LYSED, True)
    for b, dec in enumerate(decs):
        single = run_operate(life, dec, params, int(steps[b]), 10, LYSED, True)
        chex.assert_trees_all_close(jax.tree.map(lambda x, b=b: x[b], out), single, rtol=1e-6)


def test_operate_no_retrace_on_traced_knobs(rng):
    params, life = make_case(rng, 100, 10)
    for step, cooldown, sp, churn in [(100, 10, 0.5, 0.0), (200, 3, 0.9, 0.3), (7, 0, 0.1, 1.0)]:
        dec = make_decision(rng, params, [sp] * 4, [churn] * 4)
        out = _operate_sedate(life, dec, params, step, cooldown)  # max one trace in the session
        check_against_reference(life, dec, params, step, cooldown, SEDATED, False, out)


def test_operate_rejects_bad_inputs(rng):
    params, life = make_case(rng, 0, 0)
    dec = make_decision(rng, params, [0.5] * 4, [0.0] * 4)
    kw = dict(structures=LAYER_STRUCTURES, drop_to=LYSED, regrow_lysed=False, cooldown=0)
    with pytest.raises(ValueError, match=r"decision\.drop_score"):
        bad = dec._replace(drop_score={k: v for k, v in dec.drop_score.items() if k != "nm"})
        operate(life, bad, params, 0, **kw)
    with pytest.raises(ValueError, match="one structure per pruned leaf"):
        operate(life, dec, params, 0, **{**kw, "structures": LAYER_STRUCTURES[:3]})
    with pytest.raises(ValueError, match="drop_to"):
        operate(life, dec, params, 0, **{**kw, "drop_to": ALIVE})
    with pytest.raises(ValueError, match=r"decision\.sparsity"):
        operate(life, dec._replace(sparsity=jnp.zeros(3)), params, 0, **kw)
    with pytest.raises(ValueError, match="has shape"):
        grow = {**dec.grow_score, "nm": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(3)}}
        operate(life, dec._replace(grow_score=grow), params, 0, **kw)
    with pytest.raises(ValueError, match="does not fit"):
        operate(life, dec, params, 0, **{**kw, "structures": (NM(2, 4, 1),) * 4})


# ----------------------------------------------------------------------------- budgets


def test_uniform_budget():
    np.testing.assert_array_equal(layer_sparsities([(3, 4), (5,)], 0.7), [0.7, 0.7])


def test_erk_hand_example():
    s = layer_sparsities([(10, 10), (100, 10)], 0.5, "erk")
    eps = 550 / 130  # raw densities 20/100 and 110/1000
    np.testing.assert_allclose(s, [1 - eps * 0.2, 1 - eps * 0.11])


@pytest.mark.parametrize("target", [0.0, 0.5, 0.9, 0.99])
def test_erk_total_and_dense_layers(target):
    shapes = [(3, 3, 3, 16), (3, 3, 16, 32), (800, 300), (300, 10), (7, 1000)]
    s = layer_sparsities(shapes, target, "erk")
    sizes = np.array([np.prod(x) for x in shapes])
    kept = sum(n - round(sp * n) for sp, n in zip(s, sizes, strict=True))
    assert abs(kept - (1 - target) * sizes.sum()) <= len(shapes)  # within rounding
    raw = np.array([sum(x) / np.prod(x) for x in shapes])
    free = s > 0
    # Free layers' densities are proportional to the raw ERK densities, dense ones would be > 1.
    if target == 0.0:
        np.testing.assert_array_equal(s, 0.0)
        return
    eps = (1 - s[free]) / raw[free]
    np.testing.assert_allclose(eps, eps[0], rtol=1e-9)
    assert np.all(raw[~free] * eps[0] >= 1 - 1e-9)
    assert np.all((s >= 0) & (s < 1))
    if target == 0.9:  # small layers stay dense, the big one pays for them
        assert s[3] == s[4] == 0.0 and s[2] > target and s[0] < s[1] < s[2]


def test_budget_errors():
    with pytest.raises(ValueError, match="target"):
        layer_sparsities([(3, 4)], 1.0)
    with pytest.raises(ValueError, match="target"):
        layer_sparsities([(3, 4)], -0.1)
    with pytest.raises(ValueError, match="distribution"):
        layer_sparsities([(3, 4)], 0.5, "gaussian")
    with pytest.raises(ValueError, match="shapes"):
        layer_sparsities([(3, 0)], 0.5, "erk")


# ----------------------------------------------------------------------------- anesthesia


def test_anesthesia():
    scale = jnp.array([1.0, 1.0, 0.05, 0.5])
    cut = jnp.array([0.5, 0.1, 0.9, 0.0])
    out = jax.jit(anesthetize)(scale, cut, 0.2, 0.1)
    np.testing.assert_allclose(out, [0.1, 1.0, 0.05, 0.5])
    rec = jax.jit(recover)(out, 0.5)
    np.testing.assert_allclose(rec, [0.55, 1.0, 0.525, 0.75])
    # After many steps every layer is back to 1; rate 0 never recovers.
    s = out
    for _ in range(60):
        s = recover(s, 0.5)
    np.testing.assert_allclose(s, 1.0, atol=1e-6)
    np.testing.assert_allclose(recover(out, 0.0), out, rtol=1e-6)
    batched = jax.vmap(anesthetize, in_axes=(0, 0, 0, None))(
        jnp.ones((2, 3)), jnp.full((2, 3), 0.3), jnp.array([0.1, 0.5]), 0.2
    )
    np.testing.assert_allclose(batched, [[0.2] * 3, [1.0] * 3])
    with pytest.raises(ValueError, match="same shape"):
        anesthetize(jnp.ones(3), jnp.ones(2), 0.1, 0.1)


def test_lyse_marks_override_drop_to_and_kill_marked_sedated_weights():
    import jax.numpy as jnp

    from emrakul.controllers.base import Decision
    from emrakul.surgery import lifecycle as lc
    from emrakul.surgery.operate import operate

    params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
    life = lc.init({"w": jnp.ones((2, 4), bool)})
    state = jnp.array([[0, 0, 0, 0], [1, 1, 0, 0]], jnp.int8)  # two sedated weights
    life = life._replace(state={"w": state})
    lyse = {"w": jnp.array([[True, False, False, False], [True, False, False, False]])}
    score = {"w": params["w"]}
    decision = Decision(
        sparsity=jnp.array([0.5]),
        churn=jnp.zeros(1),
        drop_score=score,
        grow_score=score,
        operate=jnp.bool_(True),
        lyse=lyse,
    )
    res = operate(life, decision, params, 10, structures=(Unstructured(),),
                  drop_to=lc.SEDATED, regrow_lysed=False, cooldown=0)  # fmt: skip
    new = np.asarray(res.life.state["w"])
    # Alive [1,2,3,4 | 7,8] keep the 4 largest alive by score (3,4,7,8... sedated 5,6 may wake).
    assert (new == lc.ALIVE).sum() == 4
    assert new[0, 0] == lc.LYSED and float(res.params["w"][0, 0]) == 0.0  # marked, left
    assert new[0, 1] == lc.SEDATED  # left, unmarked: drop_to
    assert new[1, 0] == lc.LYSED  # sedated, marked, stays out: lysed
    assert bool(res.reset["w"][0, 0]) and bool(res.reset["w"][1, 0])
