"""One compiled program for a whole non-stationary stream: a host learns task after task while a
controller prunes (or a remedy revives) it, and plasticity is measured at every task's end.

The program's interval is one *task* (:mod:`emrakul.lab.hosts.streams`): a ``lax.scan`` over
its surgery intervals, each a surgery step and ``every - 1`` plain steps of the wrapped Adam (as
in :mod:`emrakul.lab.loop`, with the stream's transform applied to every minibatch, to the
controller's monitored inputs and to the held-out examples). At a task's end it records

* ``online_accuracy``: the accuracy on each training minibatch before the step learns from it,
  averaged over the task; ``train_accuracy``: the whole training split under the task's
  transform at its end; ``test_accuracy``: the held-out test split's; ``val_accuracy``: the
  validation split's (for choosing settings);
* ``dormant``: the fraction of hidden units whose ReDo score is 0 on the monitored inputs (Sokar
  et al. 2023, tau = 0);
* ``effective_rank`` of the last hidden layer's features on the monitored inputs: ``exp`` of the
  entropy of the normalised singular values (Roy & Vetterli 2007, as used by Dohare et al. 2024),
  computed in NumPy through ``jax.pure_callback`` once per task (LAPACK batched inside
  ``jit(vmap)`` can deadlock XLA:CPU);
* ``weight_norm`` of the effective (masked) weights, ``sparsity`` and ``alive`` weights.

The pieces are module-level pure functions of a :class:`StreamSetup` and one state, driven like
every host by :mod:`emrakul.lab.driver` (``make_stream(...).program``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emrakul import vitals as vit
from emrakul import wrapper as wrap_mod
from emrakul.lab import hosts
from emrakul.lab.hosts import streams
from emrakul.lab.program import Program
from emrakul.surgery.lifecycle import ALIVE


class StreamState(NamedTuple):
    """What the stream program carries: host params, the wrapper's state, the data key, the
    stream's key (the same for every arm of a seed) and the tasks completed."""

    params: Any
    opt_state: Any
    key: jax.Array
    stream_key: jax.Array
    task: jax.Array


class TaskMetrics(NamedTuple):
    """One row per task (module docstring)."""

    step: jax.Array
    train_loss: jax.Array
    online_accuracy: jax.Array
    train_accuracy: jax.Array
    val_accuracy: jax.Array
    test_accuracy: jax.Array
    dormant: jax.Array
    effective_rank: jax.Array
    weight_norm: jax.Array
    sparsity: jax.Array
    alive: jax.Array


class StreamSetup(NamedTuple):
    """The static parts of a stream program."""

    module: nn.Module
    data: hosts.Dataset
    stream: streams.Stream
    tx: optax.GradientTransformationExtraArgs
    batch: int
    every: int
    wants_stats: bool
    monitor: hosts.Split


def init(setup: StreamSetup, key: jax.Array) -> StreamState:
    """Host params, the wrapper's state, the data key; the stream key depends on the seed only."""
    k_params, k_opt, k_data = jax.random.split(key, 3)
    params = setup.module.init(k_params, setup.data.train.x[:1])["params"]
    opt_state = setup.tx.init(params)._replace(key=k_opt)
    return StreamState(params, opt_state, k_data, jax.random.fold_in(key, 17), jnp.int32(0))


def _seen(setup: StreamSetup, stream_key, step, split: hosts.Split) -> hosts.Split:
    return hosts.Split(*streams.transform(setup.stream, stream_key, step, split.x, split.y))


def _stats(setup: StreamSetup, weights, x: jax.Array) -> dict:
    return vit.activation_stats(
        setup.module, {"params": weights}, x, layer_types=(nn.Dense, hosts.Conv1D)
    )


def host_step(setup: StreamSetup, stream_key, carry, surgery: bool, extra=None):
    """One minibatch of the stream through the wrapped optimizer; returns (loss, accuracy)."""
    params, opt_state, key = carry
    key, k_batch = jax.random.split(key)
    x, y = hosts.sample_batch(k_batch, setup.data.train, setup.batch)
    x, y = streams.transform(setup.stream, stream_key, opt_state.step, x, y)

    def loss_fn(p):
        logits = setup.module.apply({"params": wrap_mod.masked(p, opt_state)}, x)
        return hosts.cross_entropy(logits, y), hosts.accuracy(logits, y)

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = setup.tx.update(
        grads, opt_state, params, surgery=surgery, value=loss, **(extra or {})
    )
    return (optax.apply_updates(params, updates), opt_state, key), (loss, acc)


def surgery_interval(setup: StreamSetup, stream_key, carry, _=None):
    """A surgery step (with the controller's statistics when it wants them), then plain steps."""
    params, opt_state, _key = carry
    extra = None
    if setup.wants_stats:
        weights = wrap_mod.masked(params, opt_state)
        seen = _seen(setup, stream_key, opt_state.step, setup.monitor)
        logits = setup.module.apply({"params": weights}, seen.x)
        extra = {"activations": _stats(setup, weights, seen.x),
                 "val_accuracy": hosts.accuracy(logits, seen.y)}  # fmt: skip
    carry, first = host_step(setup, stream_key, carry, True, extra)
    carry, rest = jax.lax.scan(
        lambda c, _: host_step(setup, stream_key, c, False), carry, None, setup.every - 1
    )
    return carry, jax.tree.map(lambda a, b: a + jnp.sum(b), first, rest)


def effective_rank(features: jax.Array) -> jax.Array:
    """``exp(H(p))`` of the normalised singular values of ``[N, H]`` features (NumPy SVD)."""

    def numpy_rank(h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, np.float64)
        if not np.all(np.isfinite(h)):
            return np.float32(np.nan)
        scale = np.abs(h).max()  # the rank is scale-free; LAPACK's gesdd fails on extreme scales
        if not scale > 0:
            return np.float32(0.0)
        h = h / scale
        # singular values from the Gram matrix's eigenvalues (LAPACK's gesdd printed DLASCL
        # errors and returned zeros on some dead-unit feature matrices; syevd does not)
        s = np.sqrt(np.clip(np.linalg.eigvalsh(h.T @ h), 0.0, None))
        total = s.sum()
        if not total > 0:
            return np.float32(0.0)
        p = s[s > 0] / total
        return np.float32(np.exp(-np.sum(p * np.log(p))))

    out = jax.ShapeDtypeStruct((), jnp.float32)
    return jax.pure_callback(numpy_rank, out, features, vmap_method="sequential")


def last_hidden(setup: StreamSetup, weights, x: jax.Array) -> jax.Array:
    """The post-ReLU features of the last hidden Dense layer (the one before the logits)."""
    _, state = setup.module.apply(
        {"params": weights}, x, capture_intermediates=True, mutable=["intermediates"]
    )
    dense = sorted(k for k in state["intermediates"] if k.startswith("Dense_"))
    return jax.nn.relu(state["intermediates"][dense[-2]]["__call__"][0])


def task_accuracy(setup: StreamSetup, state: StreamState, split: hosts.Split) -> jax.Array:
    """Accuracy of the masked weights on ``split`` under the transform of the last step."""
    weights = wrap_mod.masked(state.params, state.opt_state)
    seen = _seen(setup, state.stream_key, state.opt_state.step - 1, split)
    return hosts.evaluate(setup.module.apply, {"params": weights}, seen)["accuracy"]


def task_metrics(setup: StreamSetup, state: StreamState, loss, acc) -> TaskMetrics:
    """The end-of-task measurements (module docstring)."""
    step = state.opt_state.step
    last = step - 1  # the task's last step: its transform
    weights = wrap_mod.masked(state.params, state.opt_state)

    monitor = _seen(setup, state.stream_key, last, setup.monitor).x
    stats = _stats(setup, weights, monitor)
    hidden = [v.mean_abs for v in list(stats.values())[:-1]]  # in call order; logits last
    dormant = jnp.mean(jnp.concatenate([h <= 0 for h in hidden]).astype(jnp.float32))
    kernels = [s != ALIVE for s in jax.tree.leaves(state.opt_state.life.state) if jnp.ndim(s)]
    dead = sum(jnp.sum(k) for k in kernels)
    total = sum(k.size for k in kernels)
    return TaskMetrics(
        step=step,
        train_loss=loss,
        online_accuracy=acc,
        train_accuracy=task_accuracy(setup, state, setup.data.train),
        val_accuracy=task_accuracy(setup, state, setup.data.val),
        test_accuracy=task_accuracy(setup, state, setup.data.test),
        dormant=dormant,
        effective_rank=effective_rank(last_hidden(setup, weights, monitor)),
        weight_norm=optax.tree.norm(weights),
        sparsity=(dead / total).astype(jnp.float32),
        alive=(total - dead).astype(jnp.float32),
    )


def task(setup: StreamSetup, state: StreamState, _=None) -> tuple[StreamState, TaskMetrics]:
    """One task of the stream: its surgery intervals (a scan), then its measurements."""
    carry = (state.params, state.opt_state, state.key)
    intervals = setup.stream.task_steps // setup.every
    carry, (loss, acc) = jax.lax.scan(
        functools.partial(surgery_interval, setup, state.stream_key), carry, None, intervals
    )
    state = StreamState(*carry, state.stream_key, state.task + 1)
    n = setup.stream.task_steps
    return state, task_metrics(setup, state, jnp.sum(loss) / n, jnp.sum(acc) / n)


def run(setup: StreamSetup, state: StreamState, num: int) -> tuple[StreamState, TaskMetrics]:
    """``num`` tasks (one ``lax.scan``)."""
    return jax.lax.scan(functools.partial(task, setup), state, None, num)


def final_scores(setup: StreamSetup, state: StreamState) -> dict[str, jax.Array]:
    """The last task's held-out accuracy (``accuracy``) and validation accuracy."""
    return {"accuracy": task_accuracy(setup, state, setup.data.test),
            "val_accuracy": task_accuracy(setup, state, setup.data.val)}  # fmt: skip


def describe(metrics: TaskMetrics) -> str:
    """A chunk's progress fields: the last task's held-out accuracy and the dormant fraction."""
    acc = float(np.mean(metrics.test_accuracy[:, -1]))
    return f"task accuracy {acc:.3f} | dormant {float(np.mean(metrics.dormant[:, -1])):.3f}"


def make_program(setup: StreamSetup) -> Program:
    """The stream as a :class:`~emrakul.lab.program.Program` (one interval per task)."""
    part = functools.partial
    return Program(
        init=part(init, setup),
        run=part(run, setup),
        num_intervals=setup.stream.num_tasks,
        metrics_type=TaskMetrics,
        loss_field="train_loss",
        loss_name="training loss",
        remedy="Lower train.lr or check the stream.",
        final=part(final_scores, setup),
        describe=describe,
    )
