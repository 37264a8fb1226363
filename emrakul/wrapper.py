"""The optax wrapper: prune any model trained with any optax optimizer.

``emrakul.wrap(inner_tx, controller, ...)`` returns an ``optax.GradientTransformationExtraArgs``
whose state carries the lifecycle (masks), the vital signs, the controller's state, the
per-layer budgets and the anesthesia multipliers. The forward pass uses
``emrakul.masked(params, opt_state)``::

    tx = emrakul.wrap(optax.adam(1e-3), emrakul.controllers.rigl(), total_steps=10_000,
                      sparsity=0.9)
    opt_state = tx.init(params)
    def loss_fn(p):
        return loss(model.apply({"params": emrakul.masked(p, opt_state)}, x), y)
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

``masked`` is straight-through: the gradient with respect to ``params`` is the gradient with
respect to the effective (masked, gated) weights, dense over every weight. Sedated weights learn
from it ("virtual" gradients); lysed weights are frozen (their updates and optimizer moments are
zeroed); RigL-style regrowth reads it for inactive weights at no extra cost.

Surgery happens inside ``update`` every ``every`` steps (``step % every == 0``, so also at the
first call). A caller that drives the schedule itself - the compiled loop in
:mod:`emrakul.lab.loop`, which puts surgery between scans so that nothing is decided by a
``lax.cond`` on a batched step - passes ``surgery=True`` or ``surgery=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emrakul import masks as msk
from emrakul import vitals as vit
from emrakul._tree import Filter, PyTree, check_params, check_same_structure
from emrakul.controllers.base import Controller, Observation
from emrakul.masks.structures import Structure, Unstructured, check_structure
from emrakul.surgery import anesthesia, budgets, lifecycle
from emrakul.surgery.lifecycle import LYSED, SEDATED, Lifecycle
from emrakul.surgery.operate import operate


class Knobs(NamedTuple):
    """Traced hyperparameters of the surgery (change them in the state: no recompilation).

    Attributes:
      target: float32 [num_layers], per-layer final sparsity (uniform or ERK distribution).
      every: int32, host steps between surgeries in automatic mode.
      cooldown: int32, host steps a weight must wait after a state change before another.
      anesthesia_threshold: a layer losing more than this fraction of its alive weights in one
        surgery is anesthetised.
      anesthesia_depth: its learning-rate multiplier drops to at most this (1 = off).
      anesthesia_recovery: per host step, ``scale <- 1 - (1 - scale) * (1 - recovery)``.
      vitals_decay: EMA decay of the vital signs.
    """

    target: jax.Array
    every: jax.Array
    cooldown: jax.Array
    anesthesia_threshold: jax.Array
    anesthesia_depth: jax.Array
    anesthesia_recovery: jax.Array
    vitals_decay: jax.Array


class Health(NamedTuple):
    """Running training-health signals the learned controller observes.

    Attributes:
      loss_fast: EMA (decay 0.9) of the ``value`` (loss) passed to ``update``.
      loss_slow: EMA (decay 0.99) of the same.
      count: int32, finite losses folded in so far (for Adam-style bias correction).
      val_accuracy: the last ``val_accuracy`` passed to ``update`` (0 if none).
    """

    loss_fast: jax.Array
    loss_slow: jax.Array
    count: jax.Array
    val_accuracy: jax.Array


_FAST, _SLOW = 0.9, 0.99


def _init_health() -> Health:
    zero = jnp.float32(0.0)
    return Health(zero, zero, jnp.int32(0), zero)


def _track(health: Health, value, val_accuracy) -> Health:
    """Folds this step's loss / validation accuracy (either may be ``None``) into ``health``."""
    if value is not None:
        v = jnp.asarray(value, jnp.float32)
        if v.ndim:
            raise ValueError(f"value (the loss) must be a scalar, got shape {v.shape}")
        ok = jnp.isfinite(v)
        health = health._replace(
            loss_fast=jnp.where(ok, _FAST * health.loss_fast + (1 - _FAST) * v, health.loss_fast),
            loss_slow=jnp.where(ok, _SLOW * health.loss_slow + (1 - _SLOW) * v, health.loss_slow),
            count=health.count + ok.astype(jnp.int32),
        )
    if val_accuracy is not None:
        health = health._replace(val_accuracy=jnp.asarray(val_accuracy, jnp.float32).reshape(()))
    return health


def health_vector(health: Health) -> jax.Array:
    """``[loss, relative slope, validation accuracy]`` (float32 [3]) from :class:`Health`;
    the loss is the bias-corrected fast EMA, the slope ``(fast - slow) / slow``."""
    n = health.count.astype(jnp.float32)
    seen = health.count > 0
    fast = jnp.where(seen, health.loss_fast / (1 - _FAST**n), 0.0)
    slow = jnp.where(seen, health.loss_slow / (1 - _SLOW**n), 0.0)
    slope = (fast - slow) / (jnp.abs(slow) + 1e-8)
    return jnp.stack([fast, slope, health.val_accuracy]).astype(jnp.float32)


def observation(
    params: PyTree,
    grads: PyTree,
    life_state: PyTree,
    vitals: Any,
    target: jax.Array,
    step: jax.Array,
    key: jax.Array,
    health: Health,
    *,
    total_steps: int,
    activations: Any = None,
    filter: Filter | None = None,
) -> Observation:
    """The :class:`~emrakul.controllers.base.Observation` a controller sees at a surgery.

    The wrapper builds every observation with it, and so does
    :class:`emrakul.lab.meta.env.SurgeryEnv`,
    so that a policy sees the same thing in training and when deployed.

    Args:
      params, grads: the dense weights and the gradient of the last step.
      life_state: the lifecycle state tree.
      vitals: the vital signs (or ``None``).
      target: the per-layer target sparsity.
      step: the host step.
      key: this decision's PRNG key.
      health: the :class:`Health` tracker.
      total_steps: host steps of the whole run.
      activations: ``None``, the dict of :func:`emrakul.vitals.activation_stats`, or a tree
        from :func:`emrakul.vitals.activation_tree`.
      filter: the pruning filter (to map a dict of activation statistics onto kernels).
    """
    sizes = tuple(int(np.size(s)) for s in jax.tree.leaves(life_state) if jnp.ndim(s) > 0)
    if isinstance(activations, dict):
        activations = vit.activation_tree(params, activations, filter)
    return Observation(
        step=step,
        total_steps=int(total_steps),
        params=params,
        grads=grads,
        state=life_state,
        vitals=vitals,
        layer_size=sizes,
        target=target,
        key=key,
        activations=activations,
        health=health_vector(health),
    )


def state_observation(
    params: PyTree,
    state: Any,
    *,
    total_steps: int,
    health: Health | None = None,
    activations: Any = None,
) -> Observation:
    """The observation of a host from its wrapper state, as the meta-training environments
    (:class:`emrakul.lab.meta.env.SurgeryEnv`, :class:`emrakul.lab.meta.rl_env.DQNSurgeryEnv`)
    build it.

    The gradient is the vital signs' gradient mean and the key the state's own key.

    Args:
      params: the host's dense weights.
      state: the host's :class:`EmrakulState`.
      total_steps: host steps of the whole run.
      health: overrides ``state.health`` (e.g. with a fresh validation accuracy).
      activations: as for :func:`observation`.
    """
    return observation(
        params,
        vit.grad_mean(state.vitals),
        state.life.state,
        state.vitals,
        state.knobs.target,
        state.step,
        state.key,
        state.health if health is None else health,
        total_steps=total_steps,
        activations=activations,
    )


class EmrakulState(NamedTuple):
    """The wrapper's optimizer state.

    Attributes:
      inner: the inner optimizer's state.
      life: the :class:`~emrakul.surgery.lifecycle.Lifecycle` (masks are ``state == ALIVE``).
      vitals: a :class:`~emrakul.vitals.VitalsState`, or ``None`` when the controller does not
        need vital signs (they cost ~10% of a small MLP's step on a 2-core CPU).
      controller: the controller's state.
      gate: float multipliers for the forward pass of the current step (gate controllers),
        or ``None``.
      lr_scale: float32 [num_layers], anesthesia learning-rate multipliers.
      knobs: the traced :class:`Knobs`.
      step: int32, host steps taken.
      key: PRNG key of the run (gates and decisions fold in the step).
      last_cut: float32 [num_layers], fraction of alive weights removed by the last surgery.
      last_grown: float32 [num_layers], weights that entered ALIVE in the last surgery / size.
      health: the :class:`Health` tracker (loss EMAs and the last validation accuracy).
    """

    inner: Any
    life: Lifecycle
    vitals: Any
    controller: Any
    gate: Any
    lr_scale: jax.Array
    knobs: Knobs
    step: jax.Array
    key: jax.Array
    last_cut: jax.Array
    last_grown: jax.Array
    health: Health


def masked(params: PyTree, state: EmrakulState) -> PyTree:
    """The forward-pass weights: dead weights zeroed and gates applied, straight-through.

    The value is ``params * (state == ALIVE) * gate``; the gradient with respect to ``params``
    is the identity (the dense gradient of the effective weights), which ``update`` then routes:
    chain rule through the gates for alive weights, kept for sedated weights, zeroed for lysed.

    Args:
      params: the dense parameters.
      state: the wrapper's state (from ``init``/``update`` of :func:`wrap`).

    Returns:
      A tree like ``params``.
    """
    state = _find_state(state)
    check_same_structure(params, state.life.state, "params", "opt_state lifecycle")
    gate = state.gate if state.gate is not None else jax.tree.map(lambda _: None, params)

    def one(p, s, g):
        if jnp.ndim(s) == 0:
            return p
        eff = jnp.where(s == lifecycle.ALIVE, p, jnp.zeros((), p.dtype))
        if g is not None and jnp.ndim(g) > 0:
            eff = eff * g.astype(p.dtype)
        return p + jax.lax.stop_gradient(eff - p)

    if state.gate is None:
        return jax.tree.map(lambda p, s: one(p, s, None), params, state.life.state)
    return jax.tree.map(one, params, state.life.state, gate)


def _find_state(state: Any) -> EmrakulState:
    """The EmrakulState inside ``state`` (it may be nested in a chain or MultiSteps)."""
    if isinstance(state, EmrakulState):
        return state
    found = [
        s
        for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: isinstance(s, EmrakulState))
        if isinstance(s, EmrakulState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one Emrakul state inside the optimizer state, found {len(found)}"
        )
    return found[0]


def _structures(params: PyTree, mask_tree: PyTree, structure) -> tuple[Structure, ...]:
    """One structure per pruned leaf (a single structure or a ``(path, leaf) -> structure``)."""
    out = []
    for (path, leaf), m in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask_tree), strict=True
    ):
        if not msk.is_pruned(m):
            continue
        st = structure(path, leaf) if callable(structure) else structure
        check_structure(st)
        out.append(st)
    return tuple(out)


def _layer_index(life_state: PyTree) -> list[int | None]:
    """For each leaf, its pruned-layer index (None for unpruned leaves)."""
    index, out = 0, []
    for s in jax.tree.leaves(life_state):
        if jnp.ndim(s) > 0:
            out.append(index)
            index += 1
        else:
            out.append(None)
    return out


def wrap(
    inner: optax.GradientTransformation,
    controller: Controller,
    *,
    total_steps: int,
    sparsity: float = 0.9,
    distribution: str = "uniform",
    structure: Structure | Callable[[tuple, Any], Structure] = Unstructured(),  # noqa: B008
    filter: Filter | None = None,
    every: int = 100,
    cooldown: int = 0,
    anesthesia_threshold: float = 1.0,
    anesthesia_depth: float = 1.0,
    anesthesia_recovery: float = 0.01,
    vitals_decay: float = 0.99,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that ``controller`` prunes the model while it trains.

    Args:
      inner: any optax gradient transformation (Adam, SGD, chains, ``inject_hyperparams``...).
      controller: an :class:`emrakul.controllers.base.Controller` (``emrakul.controllers``).
      total_steps: host steps of the whole run (schedules are fractions of it).
      sparsity: the final target sparsity over the pruned leaves, in ``[0, 1)``.
      distribution: ``"uniform"`` (every layer at ``sparsity``) or ``"erk"``
        (Erdos-Renyi-Kernel, Evci et al. 2020).
      structure: ``Unstructured()``, ``NM(n, m, axis)``, ``Units(axis)`` or a function
        ``(path, leaf) -> structure`` choosing per leaf.
      filter: ``(path, leaf) -> bool`` choosing the pruned leaves; default: floating leaves with
        ``ndim >= 2`` (Dense/Conv kernels), biases and norms are left alone.
      every: host steps between surgeries (automatic mode).
      cooldown: host steps a weight must wait after changing state (flip-flop damping).
      anesthesia_threshold: cut fraction that triggers anesthesia of a layer (1 = never).
      anesthesia_depth: learning-rate multiplier right after such a cut.
      anesthesia_recovery: per-step recovery rate of the multiplier.
      vitals_decay: EMA decay of the vital signs (only kept if the controller needs them).
      seed: seed of the wrapper's own randomness (random masks, gates).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` accepts the extra keywords
      ``surgery`` (``None``: automatic; ``True``/``False``: force or skip, static), ``value``
      (this step's loss, tracked as EMAs for the learned controller), ``val_accuracy`` (the
      latest validation accuracy, kept until the next one) and ``activations`` (per-unit
      statistics for this step's surgery: the dict of :func:`emrakul.vitals.activation_stats`
      or a tree from :func:`emrakul.vitals.activation_tree`). Other extra arguments are
      ignored, as optax does.

    Raises:
      ValueError / TypeError: bad arguments, named.
    """
    if not isinstance(controller, Controller):
        raise TypeError(f"controller must be an emrakul Controller, got {type(controller)}")
    if not isinstance(total_steps, int | np.integer) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    if int(every) < 1:
        raise ValueError(f"every must be >= 1 host step, got {every}")
    if int(cooldown) < 0:
        raise ValueError(f"cooldown must be >= 0, got {cooldown}")
    if not callable(structure):
        check_structure(structure)

    def init(params: PyTree) -> EmrakulState:
        check_params(params)
        mask_tree = msk.init(params, filter)
        structures = _structures(params, mask_tree, structure)
        del structures  # validated here; recomputed (static) in update
        life = lifecycle.init(mask_tree)
        shapes = [np.shape(m) for m in jax.tree.leaves(mask_tree) if msk.is_pruned(m)]
        if not shapes:
            raise ValueError("the filter selected no leaf to prune")
        target = budgets.layer_sparsities(shapes, float(sparsity), distribution)
        knobs = Knobs(
            target=jnp.asarray(target, jnp.float32),
            every=jnp.int32(every),
            cooldown=jnp.int32(cooldown),
            anesthesia_threshold=jnp.float32(anesthesia_threshold),
            anesthesia_depth=jnp.float32(anesthesia_depth),
            anesthesia_recovery=jnp.float32(anesthesia_recovery),
            vitals_decay=jnp.float32(vitals_decay),
        )
        key = jax.random.PRNGKey(seed)
        step = jnp.int32(0)
        vitals = vit.init(params) if controller.needs_vitals else None
        health = _init_health()
        obs = observation(
            params,
            jax.tree.map(jnp.zeros_like, params),
            life.state,
            vitals,
            knobs.target,
            step,
            jax.random.fold_in(key, 1),
            health,
            total_steps=total_steps,
            filter=filter,
        )
        ctrl = controller.init(params, obs, jax.random.fold_in(key, 2))
        gate = None
        if controller.gates is not None:
            gate = controller.gates(ctrl, params, _gate_key(key, step))
        n = len(shapes)
        return EmrakulState(
            inner=inner.init(params),
            life=life,
            vitals=vitals,
            controller=ctrl,
            gate=gate,
            lr_scale=jnp.ones((n,), jnp.float32),
            knobs=knobs,
            step=step,
            key=key,
            last_cut=jnp.zeros((n,), jnp.float32),
            last_grown=jnp.zeros((n,), jnp.float32),
            health=health,
        )

    def _surgery(state: EmrakulState, params: PyTree, grads: PyTree, act=None):
        structures = _structures(params, state.life.state, structure)
        key = jax.random.fold_in(state.key, 2 * state.step + 1)
        obs = observation(
            params,
            grads,
            state.life.state,
            state.vitals,
            state.knobs.target,
            state.step,
            key,
            state.health,
            total_steps=total_steps,
            activations=act,
            filter=filter,
        )
        decision, ctrl = controller.decide(obs, state.controller)
        res = operate(
            state.life,
            decision,
            params,
            state.step,
            structures=structures,
            drop_to=controller.drop_to,
            regrow_lysed=controller.regrow_lysed,
            cooldown=state.knobs.cooldown,
        )
        lr_scale = anesthesia.anesthetize(
            state.lr_scale,
            res.cut,
            state.knobs.anesthesia_threshold,
            state.knobs.anesthesia_depth,
        )
        inner_state = optax.tree_utils.tree_map_params(
            inner,
            lambda v, r: jnp.where(r, jnp.zeros((), v.dtype), v) if jnp.ndim(r) else v,
            state.inner,
            res.reset,
        )
        state = state._replace(
            inner=inner_state,
            life=res.life,
            controller=ctrl,
            lr_scale=lr_scale,
            last_cut=res.cut,
            last_grown=res.grown,
        )
        return state, res.params

    def update(
        grads,
        state,
        params=None,
        *,
        surgery: bool | None = None,
        value=None,
        val_accuracy=None,
        activations=None,
        **extra,
    ):
        del extra
        if params is None:
            raise ValueError("emrakul.wrap's update needs params (tx.update(grads, state, params))")
        check_same_structure(params, grads, "params", "grads")
        # the surgery sees the losses of the previous steps and this step's validation accuracy
        state = state._replace(health=_track(state.health, None, val_accuracy))
        if surgery is True:
            state, new_params = _surgery(state, params, grads, activations)
        elif surgery is None:
            due = state.step % state.knobs.every == 0
            state, new_params = jax.lax.cond(
                due,
                lambda s: _surgery(s, params, grads, activations),
                lambda s: (s, params),
                state,
            )
        else:
            new_params = params
        life = state.life.state
        ctrl = state.controller
        if controller.learn is not None:
            ctrl = controller.learn(
                ctrl, params, grads, _gate_key(state.key, state.step), state.step
            )
        vitals = state.vitals
        if vitals is not None:
            vitals = vit.update(
                vitals, params, grads, lifecycle.alive_mask(life), state.knobs.vitals_decay
            )
        gate = state.gate

        def route(g, s, gt):
            if jnp.ndim(s) == 0:
                return g
            if gt is not None and jnp.ndim(gt) > 0:
                g = jnp.where(s == SEDATED, g, g * gt.astype(g.dtype))
            return jnp.where(s == LYSED, jnp.zeros((), g.dtype), g)

        gate_tree = gate if gate is not None else jax.tree.map(lambda _: None, params)
        g_theta = jax.tree.map(route, grads, life, gate_tree)
        inner_updates, inner_state = inner.update(g_theta, state.inner, new_params)
        layer = _layer_index(life)

        def scale(u, s, p_old, p_new, i):
            if i is None:  # not pruned: the surgery never changes it
                return u
            u = jnp.where(s == LYSED, jnp.zeros((), u.dtype), u * state.lr_scale[i].astype(u.dtype))
            return u + (p_new - p_old)

        leaves = [
            scale(u, s, po, pn, i)
            for u, s, po, pn, i in zip(
                jax.tree.leaves(inner_updates),
                jax.tree.leaves(life),
                jax.tree.leaves(params),
                jax.tree.leaves(new_params),
                layer,
                strict=True,
            )
        ]
        updates = jax.tree.unflatten(jax.tree.structure(params), leaves)
        step = state.step + 1
        if controller.gates is not None:
            gate = controller.gates(ctrl, params, _gate_key(state.key, step))
        new_state = state._replace(
            inner=inner_state,
            vitals=vitals,
            controller=ctrl,
            gate=gate,
            lr_scale=anesthesia.recover(state.lr_scale, state.knobs.anesthesia_recovery),
            step=step,
            health=_track(state.health, value, None),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _gate_key(key: jax.Array, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(key, 2 * step)


def sparsity(state: Any) -> jax.Array:
    """Fraction of pruned-leaf weights that are not ALIVE."""
    return msk.sparsity(lifecycle.alive_mask(_find_state(state).life.state))


def layer_sparsity(state: Any) -> jax.Array:
    """float32 [num_layers]: per pruned layer, the fraction of weights not ALIVE."""
    leaves = [s for s in jax.tree.leaves(_find_state(state).life.state) if jnp.ndim(s) > 0]
    return jnp.stack([jnp.mean((s != lifecycle.ALIVE).astype(jnp.float32)) for s in leaves])
