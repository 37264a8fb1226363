"""One compiled training program: a host trains while Emrakul operates on it.

``make_train(config)`` builds a :class:`Trainer` whose pieces are pure functions of one pytree
state (PureJaxRL-style ``make_train``, but without mutable configs or tuple-unpacked state):

* ``init(key) -> RunState`` - host params, the wrapped optimizer's state, the RNG;
* ``run(state, num_intervals) -> (state, IntervalMetrics)`` - nested ``lax.scan``: an outer scan
  over surgery intervals, an inner scan over the ``every`` host steps of each interval; the first
  step of an interval performs the surgery (``tx.update(..., surgery=True)``), so no
  ``lax.cond`` branches on a step counter that ``vmap`` would batch;
* ``evaluate(state, split)``; and ``train(key)``, the whole run as one program.

``jax.jit(jax.vmap(trainer.train))(keys)`` trains several seeds at once; Python can also drive
``run`` in chunks of the same compiled program (see :mod:`emrakul.lab.runner`) to show progress and
checkpoint. The optimizer is ``emrakul.wrap``: the loop and user code share one mechanism.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from emrakul import controllers as ctl
from emrakul import vitals as vit
from emrakul import wrapper as wrap_mod
from emrakul._tree import path_str
from emrakul.lab import hosts
from emrakul.lab.config import check_structure_fits, structure_from_config, validate
from emrakul.surgery.lifecycle import ALIVE


class RunState(NamedTuple):
    """Everything the loop carries (checkpointed whole).

    Attributes:
      params: the host's dense parameters.
      opt_state: the :class:`emrakul.wrap.EmrakulState` (inner optimizer, lifecycle, vitals,
        controller, budgets, anesthesia, step, key).
      key: the data/sampling PRNG key.
      interval: int32, surgery intervals completed.
    """

    params: Any
    opt_state: Any
    key: jax.Array
    interval: jax.Array


class IntervalMetrics(NamedTuple):
    """Metrics reduced inside the scan, one row per surgery interval."""

    step: jax.Array
    train_loss: jax.Array
    val_loss: jax.Array
    val_accuracy: jax.Array
    val_loss_after_cut: jax.Array  # validation loss right after the surgery's step
    sparsity: jax.Array
    layer_sparsity: jax.Array  # [num_layers]
    cut: jax.Array  # [num_layers] fraction of alive weights removed by this interval's surgery
    grown: jax.Array  # [num_layers] weights that entered ALIVE / layer size
    changes: jax.Array  # [num_layers] cumulative state changes
    reversals: jax.Array  # [num_layers] cumulative flip-flops


class Trainer(NamedTuple):
    """The compiled pieces of one experiment (see the module docstring)."""

    config: ml_collections.ConfigDict
    num_intervals: int
    steps_per_interval: int
    layer_names: tuple[str, ...]
    init: Any
    run: Any
    evaluate: Any
    train: Any
    interval: Any
    activations: Any


def _layer_names(params, life_state) -> tuple[str, ...]:
    names = []
    for (path, _), s in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(life_state), strict=True
    ):
        if jnp.ndim(s) > 0:
            names.append(path_str(path))
    return tuple(names)


def make_train(
    config: ml_collections.ConfigDict, controller: str | ctl.Controller | None = None
) -> Trainer:
    """Builds the training program for ``config`` (validated before anything compiles).

    Args:
      config: an experiment config (``experiments/configs/default.py`` documents every field).
      controller: the controller name to use (default ``config.controller``), or a
        :class:`~emrakul.controllers.Controller` object (e.g. the learned controller).

    Returns:
      A :class:`Trainer`.

    Raises:
      ValueError: an invalid config, naming the field.
    """
    if isinstance(controller, ctl.Controller):
        validate(config, [])
        controller_obj = controller
    else:
        name = controller or config.controller
        validate(config, [name])
        controller_obj = ctl.make(name, **dict(config.controllers.get(name, {})))
    data = hosts.load_mnist1d(
        seed=config.data.seed, num_samples=config.data.num_samples, val_fraction=config.data.val
    )
    module = hosts.make_host(config.host.kind, tuple(config.host.width))
    structure = structure_from_config(config.prune.structure)
    shapes = jax.eval_shape(lambda k: module.init(k, data.train.x[:1]), jax.random.PRNGKey(0))
    check_structure_fits(shapes["params"], structure)
    steps = int(config.train.steps)
    every = int(config.prune.every)
    num_intervals = steps // every
    total = num_intervals * every
    tx = wrap_mod.wrap(
        optax.adam(config.train.lr),
        controller_obj,
        total_steps=total,
        sparsity=config.prune.sparsity,
        distribution=config.prune.distribution,
        structure=structure,
        every=every,
        cooldown=config.prune.cooldown,
        anesthesia_threshold=config.prune.anesthesia.threshold,
        anesthesia_depth=config.prune.anesthesia.depth,
        anesthesia_recovery=config.prune.anesthesia.recovery,
        vitals_decay=config.prune.vitals_decay,
    )
    batch = int(config.train.batch_size)
    wants_stats = controller_obj.needs_activations

    def apply(params, x):
        return module.apply({"params": params}, x)

    def activations(state: RunState) -> dict:
        """ReDo statistics of every layer on the validation inputs (masked weights)."""
        weights = wrap_mod.masked(state.params, state.opt_state)
        return vit.activation_stats(
            module, {"params": weights}, data.val.x, layer_types=(nn.Dense, hosts.Conv1D)
        )

    def init(key: jax.Array) -> RunState:
        k_params, k_opt, k_data = jax.random.split(key, 3)
        params = module.init(k_params, data.train.x[:1])["params"]
        opt_state = tx.init(params)._replace(key=k_opt)
        return RunState(params, opt_state, k_data, jnp.int32(0))

    def host_step(carry, surgery: bool, extra: dict | None = None):
        params, opt_state, key = carry
        key, k_batch = jax.random.split(key)
        x, y = hosts.sample_batch(k_batch, data.train, batch)

        def loss_fn(p):
            return hosts.cross_entropy(apply(wrap_mod.masked(p, opt_state), x), y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(
            grads, opt_state, params, surgery=surgery, value=loss, **(extra or {})
        )
        return (optax.apply_updates(params, updates), opt_state, key), loss

    def evaluate(state: RunState, split: str = "val") -> dict[str, jax.Array]:
        part = getattr(data, split)
        weights = wrap_mod.masked(state.params, state.opt_state)
        return hosts.evaluate(apply, weights, part)

    def interval(state: RunState, _) -> tuple[RunState, IntervalMetrics]:
        carry = (state.params, state.opt_state, state.key)
        extra = None
        if wants_stats:  # what the learned controller observes before its surgery
            extra = {
                "activations": activations(state),
                "val_accuracy": evaluate(state, "val")["accuracy"],
            }
        carry, first = host_step(carry, True, extra)
        after_cut = evaluate(RunState(carry[0], carry[1], carry[2], state.interval), "val")
        carry, rest = jax.lax.scan(lambda c, _: host_step(c, False), carry, None, every - 1)
        params, opt_state, key = carry
        state = RunState(params, opt_state, key, state.interval + 1)
        val = evaluate(state, "val")
        life = opt_state.life
        leaves = [s for s in jax.tree.leaves(life.state) if jnp.ndim(s) > 0]
        dead = jnp.stack([jnp.sum(s != ALIVE) for s in leaves]).astype(jnp.float32)
        sizes = jnp.asarray([s.size for s in leaves], jnp.float32)
        metrics = IntervalMetrics(
            step=opt_state.step,
            train_loss=(first + jnp.sum(rest)) / every,
            val_loss=val["loss"],
            val_accuracy=val["accuracy"],
            val_loss_after_cut=after_cut["loss"],
            sparsity=jnp.sum(dead) / jnp.sum(sizes),
            layer_sparsity=dead / sizes,
            cut=opt_state.last_cut,
            grown=opt_state.last_grown,
            changes=life.changes,
            reversals=life.reversals,
        )
        return state, metrics

    def run(state: RunState, num: int) -> tuple[RunState, IntervalMetrics]:
        return jax.lax.scan(interval, state, None, num)

    def train(key: jax.Array) -> tuple[RunState, IntervalMetrics, dict[str, jax.Array]]:
        state, metrics = run(init(key), num_intervals)
        return state, metrics, evaluate(state, "test")

    probe = jax.eval_shape(init, jax.random.PRNGKey(0))
    names = _layer_names(probe.params, probe.opt_state.life.state)
    return Trainer(config, num_intervals, every, names, init, run, evaluate, train,
                   lambda state: interval(state, None), activations)  # fmt: skip
