"""The heuristic controllers in a small simulated run: decide + operate at every surgery."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ref_topk

from emrakul import masks
from emrakul.controllers import basic, schedules
from emrakul.controllers.base import Observation
from emrakul.masks import Unstructured
from emrakul.surgery import lifecycle
from emrakul.surgery.budgets import layer_sparsities
from emrakul.surgery.lifecycle import ALIVE, LYSED
from emrakul.surgery.operate import operate

T, EVERY = 1000, 50
SHAPES = ((16, 24), (24, 10))
SIZES = tuple(int(np.prod(s)) for s in SHAPES)
TARGET = np.array([0.8, 0.6], np.float32)


def make_params(rng):
    """Standard-normal kernels, zero biases (NumPy randomness: nothing to compile)."""
    normal = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return {
        "a": {"kernel": normal(SHAPES[0]), "bias": jnp.zeros(SHAPES[0][1])},
        "b": {"kernel": normal(SHAPES[1]), "bias": jnp.zeros(SHAPES[1][1])},
    }


def like(rng, tree, scale=1.0):
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), tree)


def observe(life, params, grads, step, key, target):
    return Observation(
        step=step,
        total_steps=T,
        params=params,
        grads=grads,
        state=life.state,
        vitals=None,
        layer_size=SIZES,
        target=target,
        key=key,
    )


def _operate(life, decision, params, step, drop_to, regrow_lysed):
    kw = dict(structures=(Unstructured(),) * 2, drop_to=drop_to, regrow_lysed=regrow_lysed)
    return operate(life, decision, params, step, cooldown=0, **kw)


# One compiled surgery per (drop_to, regrow_lysed), shared by all controllers.
operate_jit = jax.jit(_operate, static_argnums=(4, 5))


def make_decide(controller, traces):
    def decide(life, params, grads, cstate, step, key, target):
        traces.append(1)  # runs once per trace
        return controller.decide(observe(life, params, grads, step, key, target), cstate)

    return decide


def kernels(tree):
    return [np.asarray(tree[k]["kernel"]) for k in ("a", "b")]


def simulate(controller, target=TARGET, seed=0):
    """A fake training run: random params and grads, a noisy update between surgeries."""
    traces = []
    decide = jax.jit(make_decide(controller, traces))
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), T // EVERY + 2)
    params = make_params(rng)
    life = lifecycle.init(masks.init(params))
    target = jnp.asarray(target, jnp.float32)
    cstate = controller.init(params, observe(life, params, params, 0, keys[-1], target), keys[-1])
    hist = []
    for step in range(0, T + 1, EVERY):
        grads = like(rng, params)
        before = params
        decision, cstate = decide(life, params, grads, cstate, step, keys[step // EVERY], target)
        drop_to, regrow = controller.drop_to, controller.regrow_lysed
        res = operate_jit(life, decision, params, step, drop_to, regrow)
        life, params = res.life, res.params
        states = kernels(life.state)
        hist.append(
            dict(
                step=step,
                states=states,
                params=kernels(params),
                before=kernels(before),
                grads=kernels(grads),
                res=res,
            )
        )
        # "Training": alive and sedated weights move, lysed ones stay at exactly zero.
        noise = like(rng, params, 0.05)
        params = jax.tree.map(
            lambda p, n, s: jnp.where(s == LYSED, 0.0, p + n), params, noise, life.state
        )
    assert len(traces) == 1, "decide must not retrace when the step changes"
    return hist


def sparsity(states):
    return np.array([np.mean(s != ALIVE) for s in states])


def exact(target):
    """Per layer: the sparsity the surgery reaches for a target, after rounding."""
    return np.array(
        [round(float(np.float32(t) * n)) / n for t, n in zip(target, SIZES, strict=True)]
    )


def test_dense_never_prunes():
    hist = simulate(basic.dense())
    for h in hist:
        assert all(np.all(s == ALIVE) for s in h["states"])
        assert int(jnp.sum(h["res"].life.changes)) == 0


def test_one_shot_prunes_once_by_magnitude():
    hist = simulate(basic.one_shot(at=0.5))
    for h in hist:
        want = exact(TARGET) if h["step"] >= 500 else np.zeros(2)
        np.testing.assert_array_equal(sparsity(h["states"]), want)
    h = hist[10]
    assert h["step"] == 500
    for s, w, n, t in zip(h["states"], h["before"], SIZES, TARGET, strict=True):
        keep = n - round(float(t * n))
        np.testing.assert_array_equal(s == ALIVE, ref_topk(np.abs(w), keep))
    # Pruned once: the number of changes never grows after the cut.
    assert len({int(jnp.sum(h["res"].life.changes)) for h in hist[10:]}) == 1


def test_snip_uses_saliency_at_init():
    hist = simulate(basic.snip())
    h = hist[0]
    for s, w, g, n, t in zip(h["states"], h["before"], h["grads"], SIZES, TARGET, strict=True):
        keep = n - round(float(t * n))
        np.testing.assert_array_equal(s == ALIVE, ref_topk(np.abs(w * g), keep))
        assert np.any((s == ALIVE) != ref_topk(np.abs(w), keep))  # not plain magnitude
    for h in hist:
        np.testing.assert_array_equal(sparsity(h["states"]), exact(TARGET))
    assert int(jnp.sum(hist[-1]["res"].life.changes)) == int(jnp.sum(hist[0]["res"].life.changes))


def test_gmp_follows_cubic_schedule():
    target = layer_sparsities(SHAPES, 0.75, "erk")  # per-layer ERK targets
    assert target[0] > target[1]
    hist = simulate(basic.gmp(start=0.2, end=0.8), target=target)
    prev = np.zeros(2)
    for h in hist:
        sched = np.asarray(schedules.cubic(h["step"], T, target.astype(np.float32), 0.2, 0.8))
        got = sparsity(h["states"])
        np.testing.assert_array_equal(got, exact(sched))
        assert np.all(got >= prev)
        prev = got
        if h["step"] < 200:
            assert np.all(got == 0)
        if h["step"] >= 800:
            np.testing.assert_array_equal(got, exact(target))
    assert 0 < sparsity(hist[8]["states"])[0] < sparsity(hist[12]["states"])[0]


@pytest.mark.parametrize("factory", [basic.set_, basic.rigl], ids=["set", "rigl"])
def test_dynamic_sparse_constant_sparsity_and_swaps(factory):
    controller = factory()
    assert controller.regrow_lysed
    hist = simulate(controller)
    for h in hist:
        np.testing.assert_array_equal(sparsity(h["states"]), exact(TARGET))
    # Step 0 is a random mask, not a magnitude mask.
    keep0 = SIZES[0] - round(float(TARGET[0] * SIZES[0]))
    magnitude = ref_topk(np.abs(hist[0]["before"][0]), keep0)
    assert np.any((hist[0]["states"][0] == ALIVE) != magnitude)
    swaps = 0
    for prev, h in itertools.pairwise(hist):
        pairs = list(zip(prev["states"], h["states"], strict=True))
        moved = sum(int(np.sum((a == ALIVE) != (b == ALIVE))) for a, b in pairs)
        if h["step"] < 750:
            swaps += moved > 0
            entered = [(a != ALIVE) & (b == ALIVE) for a, b in pairs]
            for e, p in zip(entered, h["params"], strict=True):
                np.testing.assert_array_equal(p[e], 0.0)  # regrown lysed weights restart at 0
            if factory is basic.rigl:  # grown where |grad| is largest among the candidates
                for e, s, g in zip(entered, h["states"], h["grads"], strict=True):
                    if e.any():
                        assert np.abs(g[e]).min() >= np.abs(g[s != ALIVE]).max()
        else:
            assert moved == 0
    assert swaps >= 12


def test_rigl_churn_follows_cosine_decay():
    hist = simulate(basic.rigl(alpha=0.3, end=0.75))
    for h in hist[1:]:
        churn = np.float32(schedules.cosine_decay(h["step"], T, 0.3, 0.75))
        alive = np.array([n - round(float(t * n)) for t, n in zip(TARGET, SIZES, strict=True)])
        # round(churn * alive) weights leave (fewer when just-dropped ones are regrown).
        n_churn = np.round(churn * alive.astype(np.float32))
        np.testing.assert_array_less(np.asarray(h["res"].cut) * alive, n_churn + 0.5)
        if h["step"] < 600:
            assert np.all(np.asarray(h["res"].cut) > 0)


@pytest.mark.parametrize("factory", [basic.rigl, basic.gmp], ids=["rigl", "gmp"])
def test_decide_under_vmap_matches_single(factory):
    """A population of seeds: vmapped decisions equal the per-seed ones (operate's own vmap
    test is in test_surgery)."""
    controller = factory()
    decide = make_decide(controller, [])
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda *x: jnp.stack(x), *[make_params(rng) for _ in range(3)])
    life = lifecycle.init(masks.init(make_params(rng)))
    cstates = jax.tree.map(lambda x: jnp.stack([x] * 3), controller.init(None, None, None))
    target = jnp.asarray(TARGET)
    steps = jnp.array([0, 400, 900])
    batched = jax.jit(jax.vmap(decide, in_axes=(None, 0, 0, 0, 0, 0, None)))
    decisions, cs = batched(life, params, params, cstates, steps, keys, target)
    single = jax.jit(decide)
    for b in range(3):
        take = lambda t, b=b: jax.tree.map(lambda x: x[b], t)
        d, c = single(
            life, take(params), take(params), take(cstates), int(steps[b]), keys[b], target
        )
        chex.assert_trees_all_close(take(decisions), d)
        chex.assert_trees_all_equal(take(cs), c)
        res = operate_jit(life, d, take(params), int(steps[b]), LYSED, controller.regrow_lysed)
        if factory is basic.rigl:  # every seed's first call is the random mask at the target
            np.testing.assert_array_equal(sparsity(kernels(res.life.state)), exact(TARGET))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="at"):
        basic.one_shot(at=1.5)
    with pytest.raises(ValueError, match="start <= end"):
        basic.gmp(start=0.8, end=0.2)
    with pytest.raises(ValueError, match="zeta"):
        basic.set_(zeta=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        basic.rigl(alpha=2.0)


@pytest.mark.parametrize(
    "factory", [basic.dense, basic.one_shot, basic.snip, basic.gmp, basic.set_, basic.rigl]
)
def test_decide_rejects_mismatched_observations(factory):
    controller = factory()
    rng = np.random.default_rng(0)
    params = make_params(rng)
    life = lifecycle.init(masks.init(params))
    key = jax.random.PRNGKey(0)
    state = controller.init(params, None, key)
    grads = {"a": params["a"]}  # layer "b" missing
    with pytest.raises(ValueError, match=r"observation\.grads"):
        controller.decide(observe(life, params, grads, 0, key, jnp.asarray(TARGET)), state)
    with pytest.raises(ValueError, match=r"observation\.target"):
        controller.decide(observe(life, params, params, 0, key, jnp.zeros(3)), state)
