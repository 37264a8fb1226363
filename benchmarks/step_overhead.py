"""Cost of Emrakul inside a train step, as ratios to the plain dense step (one run, medians).

MLP 784-512-512-10 (Flax Linen), Adam, batch 256, float32:

* ``dense``: grad + Adam + apply_updates.
* ``masks``: the forward pass uses ``masks.apply(params, masks)``, no vital signs.
* ``masks + 1 EMA`` (reference, not an Emrakul step): ``masks`` plus a single float32 EMA of
  the gradient, the first of the five per-parameter statistics the vital signs keep. It shows
  how much of the 5% budget one extra pass over the parameters already takes on this machine.
* ``masks + state r/w`` (reference, not an Emrakul step): ``masks`` plus reading and writing,
  once, arrays of exactly the vital-signs state's dtypes and shapes (three float32 arrays, an
  int8 and a uint16 array per parameter: 15 bytes each way), each updated by ``x + 1`` and
  nothing else. Any update of that state every step must at least move these bytes, wherever
  and however it runs, so this row estimates the floor of ``vitals+masks`` on the machine at
  hand for XLA's layout (one loop per state array and leaf: 30 loops here).
* ``masks + packed r/w`` (reference): the same bytes as one uint8 buffer (15 per parameter),
  updated by ``x + 1`` in one loop: the traffic without the per-loop costs.
* ``vitals+masks``: the forward pass uses ``masks.apply(params, masks)`` (90% sparse kernels),
  the dense ("virtual") gradient is taken with respect to the masked weights, the vital signs
  are updated, then Adam.
* ``vitals every k + masks``: the same with the vital signs updated on every k-th step only
  (``wrap(..., vitals_every=k)``'s ``lax.cond`` on a step counter; ``--every``, default 10).
* ``compact vitals + masks`` and ``compact vitals every k + masks``: the same with the compact
  state (:data:`emrakul.vitals.COMPACT_STATISTICS`: bfloat16 EMAs, uint8 age, 8 bytes per
  parameter instead of 15).
* ``+ rigl masks``: the ``vitals+masks`` step, and every step every kernel's mask is
  recomputed as RigL does (Evci et al. 2020): drop the 30% smallest-magnitude active weights,
  regrow as many inactive weights with the largest gradient magnitude (two exact
  ``topk_mask`` selections per kernel).
* ``+ rigl masks (native top-k)``: the same with ``topk_mask(..., impl="native")``, the optional
  native CPU kernel of :mod:`emrakul.masks.native` (the row is left out where it cannot be
  built); both RigL rows must end with identical masks.

* ``wrap: ...``: the user-facing step, ``emrakul.wrap(adam, controller)`` (lifecycle routing,
  surgery cond, health tracking) with ``emrakul.masked`` in the forward pass: GMP (no vital
  signs), GSNR with vital signs every step and every k steps.

Targets (issue 22): ``vitals every k + masks`` (a default period and state) <= 1.05x dense;
``+ rigl masks`` <= 1.5x dense (met by the native top-k only; masks move every ~100 steps, so
its amortised cost is under 1%).
Run: ``python -m benchmarks.step_overhead [--rounds 50] [--repeats 5] [--every 10]``
"""

from __future__ import annotations

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import emrakul
from benchmarks._timing import markdown_table, step_ratios
from emrakul import controllers, vitals
from emrakul import masks as msk
from emrakul.masks import native

SPARSITY = 0.9
PERIOD = 10  # the candidate period of the periodic rows (--every)
DROP_FRACTION = 0.3


class MLP(nn.Module):
    """784-512-512-10 ReLU MLP."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(512)(x))
        x = nn.relu(nn.Dense(512)(x))
        return nn.Dense(10)(x)


def wrap_rows(every: int) -> list[tuple[str, str, dict]]:
    """The rows timing ``emrakul.wrap``'s own step: label, controller, wrap settings."""
    return [("wrap: gmp (no vital signs)", "gmp", {}),
            ("wrap: gsnr, vital signs every step", "gsnr", {"vitals_every": 1}),
            ("wrap: gsnr, vital signs every k", "gsnr", {"vitals_every": every})]  # fmt: skip


def rigl_masks(masks, params, grads, drop_fraction, select=msk.topk_mask):
    """Drop the smallest active |w|, regrow the same number of inactive weights by |g|
    (``select(scores, k)``: an exact top-k mask; :func:`emrakul.masks.topk_mask` by default)."""

    def one(m, w, g):
        n_active = jnp.sum(m, dtype=jnp.int32)
        n_drop = jnp.round(drop_fraction * n_active).astype(jnp.int32)
        keep = select(jnp.where(m, jnp.abs(w), -jnp.inf), n_active - n_drop)
        grow = select(jnp.where(keep, -jnp.inf, jnp.abs(g)), n_drop)
        return keep | grow

    return msk.map_pruned(one, masks, params, grads)


def problem(batch: int):
    """The timed problem: ``(loss_fn, params, tx, masks)`` for the MLP on one fixed batch of
    random data, Adam, and kernel masks at ``SPARSITY`` (magnitude)."""
    model = MLP()
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, 784))
    y = jax.random.randint(key, (batch,), 0, 10)
    params = model.init(key, x)["params"]

    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    masks = msk.map_pruned(
        lambda m, w: msk.select(jnp.abs(w), msk.Unstructured(), SPARSITY), msk.init(params), params
    )
    return loss_fn, params, optax.adam(1e-3), masks


def wrap_step(batch: int, controller: str, **wrap_kwargs):
    """The user-facing step: ``emrakul.wrap(adam, controller)`` at 90% (a surgery every 100
    steps), ``emrakul.masked`` in the forward pass; jitted, buffers donated. Returns the step and
    its initial ``[params, opt_state]``."""
    loss_fn, params, tx, _ = problem(batch)
    wrapped = emrakul.wrap(tx, controllers.make(controller), total_steps=100_000, sparsity=SPARSITY,
                           **wrap_kwargs)  # fmt: skip
    state = wrapped.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s):
        g = jax.grad(lambda q: loss_fn(emrakul.masked(q, s)))(p)
        u, s = wrapped.update(g, s, p)
        return optax.apply_updates(p, u), s

    copy = lambda t: jax.tree.map(jnp.copy, t)
    return step, [copy(params), copy(state)]


def same_masks(a, b) -> bool:
    """Whether two mask trees are equal leaf by leaf."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(bool(jnp.array_equal(x, y)) for x, y in pairs)


def build(batch: int, select=msk.topk_mask, update=vitals.update, every: int = 10):
    """The timed steps (jitted, buffers donated) and their initial states; ``select`` is the
    top-k mask of the RigL step, ``update`` the vital-signs update of the vitals steps, ``every``
    the period of the periodic rows."""
    loss_fn, params, tx, masks = problem(batch)
    compact = functools.partial(update, statistics=vitals.COMPACT_STATISTICS)

    def periodic(fold):
        @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
        def step(p, o, v, c, m):
            g = jax.grad(loss_fn)(msk.apply(p, m))
            v = jax.lax.cond((c + 1) % every == 0, lambda v: fold(v, p, g, m), lambda v: v, v)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, v, c + 1

        return step

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def with_compact(p, o, v, m):
        g = jax.grad(loss_fn)(msk.apply(p, m))
        v = compact(v, p, g, m)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, v

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def dense(p, o):
        g = jax.grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def masks_only(p, o, m):
        g = jax.grad(loss_fn)(msk.apply(p, m))
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def one_ema(p, o, e, m):
        g = jax.grad(loss_fn)(msk.apply(p, m))
        e = jax.tree.map(lambda e, g: 0.99 * e + 0.01 * g, e, g)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, e

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def state_rw(p, o, v, m):
        g = jax.grad(loss_fn)(msk.apply(p, m))
        inc = functools.partial(jax.tree.map, lambda x: x + 1)
        v = v._replace(
            grad_mean=inc(v.grad_mean),
            grad_sq=inc(v.grad_sq),
            flip_rate=inc(v.flip_rate),
            last_sign=inc(v.last_sign),
            age=inc(v.age),
        )
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, v

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def packed_rw(p, o, b, m):
        g = jax.grad(loss_fn)(msk.apply(p, m))
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, b + 1

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def with_vitals(p, o, v, m):
        g = jax.grad(loss_fn)(msk.apply(p, m))  # dense gradient w.r.t. the masked weights
        v = update(v, p, g, m)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, v

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
    def with_rigl(p, o, v, m):
        g = jax.grad(loss_fn)(msk.apply(p, m))
        v = update(v, p, g, m)
        m = rigl_masks(m, p, g, DROP_FRACTION, select)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, v, m

    steps = {
        "dense": dense,
        "masks": masks_only,
        "masks + 1 EMA": one_ema,
        "masks + state r/w": state_rw,
        "masks + packed r/w": packed_rw,
        "vitals+masks": with_vitals,
        "vitals every k + masks": periodic(update),
        "compact vitals + masks": with_compact,
        "compact vitals every k + masks": periodic(compact),
        "+ rigl masks": with_rigl,
    }
    return params, tx.init(params), vitals.init(params), masks, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=PERIOD)
    args = parser.parse_args()
    params, opt, vit, masks, steps = build(args.batch, every=args.every)
    small = vitals.init(params, vitals.COMPACT_STATISTICS)
    zero = jnp.int32(0)
    copy = lambda t: jax.tree.map(jnp.copy, t)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    rigl_state = [copy(params), copy(opt), copy(vit), copy(masks)]
    runs = {
        "dense": (steps["dense"], [copy(params), copy(opt)], 2),
        "masks": (steps["masks"], [copy(params), copy(opt), masks], 2),
        "masks + 1 EMA": (
            steps["masks + 1 EMA"],
            [copy(params), copy(opt), jax.tree.map(jnp.zeros_like, params), masks],
            3,
        ),
        "masks + state r/w": (
            steps["masks + state r/w"],
            [copy(params), copy(opt), copy(vit), masks],
            3,
        ),
        "masks + packed r/w": (
            steps["masks + packed r/w"],
            [copy(params), copy(opt), jnp.zeros(15 * n_params, jnp.uint8), masks],
            3,
        ),
        "vitals+masks": (steps["vitals+masks"], [copy(params), copy(opt), copy(vit), masks], 3),
        "vitals every k + masks": (
            steps["vitals every k + masks"],
            [copy(params), copy(opt), copy(vit), copy(zero), masks],
            4,
        ),
        "compact vitals + masks": (
            steps["compact vitals + masks"],
            [copy(params), copy(opt), copy(small), masks],
            3,
        ),
        "compact vitals every k + masks": (
            steps["compact vitals every k + masks"],
            [copy(params), copy(opt), copy(small), copy(zero), masks],
            4,
        ),
        "+ rigl masks": (steps["+ rigl masks"], rigl_state, 4),
    }
    native_state = [copy(params), copy(opt), copy(vit), copy(masks)]
    if native.available():
        select = functools.partial(msk.topk_mask, impl="native")
        native_rigl = build(args.batch, select)[4]["+ rigl masks"]
        runs["+ rigl masks (native top-k)"] = (native_rigl, native_state, 4)
    else:
        print(f"(no native top-k row: the kernel is {native.status()})")
    for label, name, kw in wrap_rows(args.every):
        step, state = wrap_step(args.batch, name, **kw)
        runs[label] = (step, state, 2)
    med = step_ratios(runs, rounds=args.rounds, repeats=args.repeats)
    final_sparsity = float(msk.sparsity(rigl_state[3]))
    rows = []
    for name, target in [
        ("dense", "-"),
        ("masks", "-"),
        ("masks + 1 EMA", "(reference)"),
        ("masks + state r/w", "(floor, XLA layout)"),
        ("masks + packed r/w", "(reference)"),
        ("vitals+masks", "(k = 1)"),
        ("vitals every k + masks", "<= 1.05 (issue 22)"),
        ("compact vitals + masks", "(k = 1)"),
        ("compact vitals every k + masks", "-"),
        ("wrap: gmp (no vital signs)", "(reference)"),
        ("wrap: gsnr, vital signs every step", "(k = 1)"),
        ("wrap: gsnr, vital signs every k", "(k = --every)"),
        ("+ rigl masks", "<= 1.5"),
        ("+ rigl masks (native top-k)", "<= 1.5"),
    ]:
        if name not in med:
            continue
        t, ratio = med[name]
        rows.append([name, f"{t * 1e3:.3f}", f"{ratio:.3f}", target])
    print(
        f"\njax {jax.__version__}, {jax.default_backend()}, batch {args.batch}, kernels "
        f"{SPARSITY:.0%} sparse (after RigL steps: {final_sparsity:.4f}); k = {args.every}; "
        f"medians of {args.repeats} x {args.rounds} interleaved rounds"
    )
    print(markdown_table(["step", "ms", "ratio to dense", "target"], rows))
    print(f"(dense median {med['dense'][0] * 1e3:.3f} ms)")
    if "+ rigl masks (native top-k)" in med:
        same = same_masks(rigl_state[3], native_state[3])
        print(f"RigL masks identical with the XLA and the native top-k after all steps: {same}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
