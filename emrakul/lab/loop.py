"""One compiled training program: a host trains while Emrakul operates on it.

``make_train(config)`` builds a :class:`Trainer` whose pieces are pure functions of one pytree
state (PureJaxRL-style ``make_train``, but without mutable configs or tuple-unpacked state):

* ``init(key) -> RunState`` - host params, the wrapped optimizer's state, the RNG;
* ``run(state, num_intervals) -> (state, IntervalMetrics)`` - nested ``lax.scan``: an outer scan
  over surgery intervals, an inner scan over the ``every`` host steps of each interval; the first
  step of an interval performs the surgery (``tx.update(..., surgery=True)``), so no
  ``lax.cond`` branches on a step counter that ``vmap`` would batch;
* ``evaluate(state, split)``; and ``train(key)``, the whole run as one program.

``jax.jit(jax.vmap(trainer.train))(keys)`` trains several seeds at once; ``trainer.program`` is
the same program as a :class:`~emrakul.lab.program.Program`, which :mod:`emrakul.lab.driver`
runs in chunks to show progress and checkpoint (:func:`emrakul.lab.runner.run_controller`). The
optimizer is ``emrakul.wrap`` around Adam (:func:`emrakul.lab.build.wrapped_adam`): the loop and
user code share one mechanism. Every piece is a module-level pure function of a
:class:`Setup` (the static parts) and the state.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from emrakul import controllers as ctl
from emrakul import vitals as vit
from emrakul import wrapper as wrap_mod
from emrakul._tree import path_str
from emrakul.lab import hosts
from emrakul.lab.build import classifier_data, config_adam, make_controller, monitor_split
from emrakul.lab.config import GROUPS, check_structure_fits, structure_from_config, validate
from emrakul.lab.program import Program
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
    program: Program | None = None  # the same program for :mod:`emrakul.lab.driver`


class Setup(NamedTuple):
    """The static parts of one classifier program (closed over, never traced).

    ``monitor`` is the part of the validation split that the per-interval metrics and the
    controller's observations use (``data.monitor`` examples; the whole split by default);
    :func:`evaluate` on ``"val"`` scores the whole split. With group pruning the forward pass
    ties each group's followers to its leader; after a lysis (:mod:`emrakul.lab.loop_lysis`)
    the host is the compact replay ``apply`` and the metrics count removed weights as dead.
    """

    module: nn.Module
    data: hosts.Dataset
    tx: optax.GradientTransformationExtraArgs
    batch: int
    every: int
    wants_stats: bool
    monitor: hosts.Split | None = None
    groups: Any = None  # GroupPruning with prune.structure='groups' (followers tied)
    apply: Any = None  # the compact host's apply(variables, x) after a lysis
    full_sizes: tuple[int, ...] | None = None  # pruned layers' sizes before any lysis


def _layer_names(params, life_state) -> tuple[str, ...]:
    names = []
    for (path, _), s in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(life_state), strict=True
    ):
        if jnp.ndim(s) > 0:
            names.append(path_str(path))
    return tuple(names)


def _apply(setup: Setup, params, x: jax.Array) -> jax.Array:
    return (setup.apply or setup.module.apply)({"params": params}, x)


def weights(setup: Setup, params, opt_state):
    """The forward pass's weights: masked, and with group pruning tied to the leaders."""
    if setup.groups is None:
        return wrap_mod.masked(params, opt_state)
    return setup.groups.tied(params, opt_state)


def activations(setup: Setup, state: RunState) -> dict:
    """ReDo statistics of every layer on the validation inputs (masked weights)."""
    return vit.activation_stats(
        setup.module,
        {"params": weights(setup, state.params, state.opt_state)},
        monitor_data(setup).x,
        layer_types=(nn.Dense, hosts.Conv1D),
    )


def monitor_data(setup: Setup) -> hosts.Split:
    """The validation examples the per-interval metrics and the controller's observations use."""
    return setup.data.val if setup.monitor is None else setup.monitor


def init(setup: Setup, key: jax.Array) -> RunState:
    """Host params, the wrapped optimizer's state (with its own key) and the data key."""
    k_params, k_opt, k_data = jax.random.split(key, 3)
    params = setup.module.init(k_params, setup.data.train.x[:1])["params"]
    opt_state = setup.tx.init(params)._replace(key=k_opt)
    return RunState(params, opt_state, k_data, jnp.int32(0))


def host_step(setup: Setup, carry, surgery: bool, extra: dict | None = None):
    """One minibatch step of the host through the wrapped optimizer (with surgery or not)."""
    params, opt_state, key = carry
    key, k_batch = jax.random.split(key)
    x, y = hosts.sample_batch(k_batch, setup.data.train, setup.batch)

    def loss_fn(p):
        return hosts.cross_entropy(_apply(setup, weights(setup, p, opt_state), x), y)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = setup.tx.update(
        grads, opt_state, params, surgery=surgery, value=loss, **(extra or {})
    )
    return (optax.apply_updates(params, updates), opt_state, key), loss


def evaluate(setup: Setup, state: RunState, split: str = "val") -> dict[str, jax.Array]:
    """Loss and accuracy of the masked weights on a whole split (``"train"``, ``"val"``,
    ``"test"``, or ``"monitor"``: the validation examples the per-interval metrics use)."""
    part = monitor_data(setup) if split == "monitor" else getattr(setup.data, split)
    w = weights(setup, state.params, state.opt_state)
    return hosts.evaluate(lambda p, x: _apply(setup, p, x), w, part)


def final_scores(setup: Setup, state: RunState) -> dict[str, jax.Array]:
    """The end-of-run evaluation: test ``loss`` and ``accuracy``, and the whole validation
    split's as ``val_loss`` and ``val_accuracy``."""
    val = evaluate(setup, state, "val")
    return {**evaluate(setup, state, "test"), "val_loss": val["loss"],
            "val_accuracy": val["accuracy"]}  # fmt: skip


def _metrics(setup: Setup, state: RunState, train_loss, val, after_cut) -> IntervalMetrics:
    opt_state = state.opt_state
    life = opt_state.life
    leaves = [s for s in jax.tree.leaves(life.state) if jnp.ndim(s) > 0]
    dead = jnp.stack([jnp.sum(s != ALIVE) for s in leaves]).astype(jnp.float32)
    sizes = jnp.asarray([s.size for s in leaves], jnp.float32)
    if setup.full_sizes is not None:  # lysed weights are dead weights of the original layers
        full = jnp.asarray(setup.full_sizes, jnp.float32)
        dead, sizes = dead + full - sizes, full
    return IntervalMetrics(
        step=opt_state.step,
        train_loss=train_loss,
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


def interval(setup: Setup, state: RunState, _=None) -> tuple[RunState, IntervalMetrics]:
    """One surgery interval: the surgery step, then ``every - 1`` plain steps (a scan)."""
    carry = (state.params, state.opt_state, state.key)
    extra = None
    if setup.wants_stats:  # what the learned controller observes before its surgery
        extra = {
            "activations": activations(setup, state),
            "val_accuracy": evaluate(setup, state, "monitor")["accuracy"],
        }
    carry, first = host_step(setup, carry, True, extra)
    after_cut = evaluate(setup, RunState(carry[0], carry[1], carry[2], state.interval), "monitor")
    carry, rest = jax.lax.scan(
        lambda c, _: host_step(setup, c, False), carry, None, setup.every - 1
    )
    params, opt_state, key = carry
    state = RunState(params, opt_state, key, state.interval + 1)
    train_loss = (first + jnp.sum(rest)) / setup.every
    return state, _metrics(setup, state, train_loss, evaluate(setup, state, "monitor"), after_cut)


def run(setup: Setup, state: RunState, num: int) -> tuple[RunState, IntervalMetrics]:
    """``num`` surgery intervals (one ``lax.scan``)."""
    return jax.lax.scan(functools.partial(interval, setup), state, None, num)


def train(
    setup: Setup, num_intervals: int, key: jax.Array
) -> tuple[RunState, IntervalMetrics, dict[str, jax.Array]]:
    """The whole run as one program: init, every interval, the test evaluation."""
    state, metrics = run(setup, init(setup, key), num_intervals)
    return state, metrics, evaluate(setup, state, "test")


def describe(metrics: IntervalMetrics) -> str:
    """A chunk's progress fields: the last interval's validation accuracy and sparsity."""
    acc = float(np.mean(metrics.val_accuracy[:, -1]))
    return f"val accuracy {acc:.3f} | sparsity {float(np.mean(metrics.sparsity[:, -1])):.3f}"


def _setup(config: ml_collections.ConfigDict, controller: ctl.Controller) -> tuple[Setup, int]:
    """The data, host and wrapped Adam of ``config`` (checked), and the number of intervals."""
    from emrakul.lab import loop_lysis  # it builds on this module

    data = classifier_data(config)
    module = hosts.make_host(config.host.kind, tuple(config.host.width))
    every = int(config.prune.every)
    num_intervals = int(config.train.steps) // every
    groups = None
    if config.prune.structure.strip().lower() == GROUPS:
        groups = loop_lysis.host_groups(module, data.train.x[:1])
        tx = config_adam(config, controller, num_intervals * every, groups.structure, groups.filter)
    else:
        structure = structure_from_config(config.prune.structure)
        shapes = jax.eval_shape(lambda k: module.init(k, data.train.x[:1]), jax.random.PRNGKey(0))
        check_structure_fits(shapes["params"], structure)
        tx = config_adam(config, controller, num_intervals * every, structure)
    batch = int(config.train.batch_size)
    monitor = monitor_split(config, data)
    setup = Setup(
        module, data, tx, batch, every, controller.needs_activations, monitor, groups=groups
    )
    return setup, num_intervals


def program(setup: Setup, num_intervals: int, init_fn=None, lysis=None) -> Program:
    """The classifier :class:`~emrakul.lab.program.Program` of ``setup`` (``init_fn``: its
    ``init`` when not :func:`init`, as for a compact host that only resumes)."""
    part = functools.partial
    return Program(
        init=init_fn or part(init, setup),
        run=part(run, setup),
        num_intervals=num_intervals,
        metrics_type=IntervalMetrics,
        loss_field="train_loss",
        loss_name="training loss",
        remedy="Lower train.lr or check the data.",
        final=part(final_scores, setup),
        describe=describe,
        lysis=lysis,
    )


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
    from emrakul.lab import loop_lysis  # it builds on this module

    if not isinstance(controller, ctl.Controller):
        controller = controller or config.controller
    validate(config, [] if isinstance(controller, ctl.Controller) else [controller])
    kwargs = config.get("controllers", {})
    controller = make_controller(controller, kwargs)
    setup, num_intervals = _setup(config, controller)
    lysis = loop_lysis.make_lysis(config, controller, setup, num_intervals)
    prog = program(setup, num_intervals, lysis=lysis)
    probe = jax.eval_shape(prog.init, jax.random.PRNGKey(0))
    names = _layer_names(probe.params, probe.opt_state.life.state)
    part = functools.partial
    return Trainer(config, num_intervals, setup.every, names, prog.init, prog.run,
                   part(evaluate, setup), part(train, setup, num_intervals),
                   part(interval, setup), part(activations, setup), prog)  # fmt: skip
