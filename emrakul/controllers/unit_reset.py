"""Unit re-initialisation on a sequential stack: what continual backprop and ReDo share.

Re-initialising a hidden unit (Dohare et al. 2024, "Loss of plasticity in deep continual
learning", Nature 632; Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement
Learning") draws its incoming weights afresh from the layer's initialiser, zeroes its bias and
its outgoing weights (so the network's function does not jump), and restarts the optimizer's
moments of all of them. The stack is read by :func:`emrakul.export.stack.layer_names` (``Conv*_i``
then ``Dense_i``, as in the lab's hosts); the last layer's units (the outputs) are never reset.
Also here: the decision that only rewrites (:func:`hold`), shared by the dense remedies.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from emrakul._tree import PyTree
from emrakul.controllers.base import Decision, Observation, leaf_scores, make_decision
from emrakul.controllers.basic import current_sparsity
from emrakul.export.stack import consumer_view, layer_names
from emrakul.surgery.lifecycle import ALIVE
from emrakul.surgery.rewrite import Rewrite, identity

# Flax's lecun_normal: a normal truncated at two standard deviations, rescaled to unit variance.
_TRUNCATED_STD = 0.87962566103423978


def hidden_layers(params: PyTree) -> tuple[tuple[str, str], ...]:
    """``(producer, consumer)`` layer names of every hidden layer of a sequential stack.

    Raises:
      ValueError: ``params`` is not a stack of ``Dense_i`` / ``Conv*_i`` layers (the reason is
        named), or it has no hidden layer.
    """
    try:
        names = layer_names(params)
    except ValueError as e:
        raise ValueError(
            f"unit re-initialisation needs a sequential Dense/Conv stack: {e}".replace(
                "cannot compact: ", ""
            )
        ) from None
    if len(names) < 2:
        raise ValueError(f"unit re-initialisation needs a hidden layer; the stack is {names}")
    return tuple(itertools.pairwise(names))


def unit_count(params: Mapping, name: str) -> int:
    """The number of output units of layer ``name`` (its kernel's last axis)."""
    return int(jnp.shape(params[name]["kernel"])[-1])


def _alive(state: Mapping | None, name: str, shape: tuple) -> jax.Array:
    """bool ``shape``: True where layer ``name``'s kernel weight is ALIVE (all True when the
    lifecycle is absent or the layer is not pruned, its scalar marker)."""
    if state is None:
        return jnp.ones(shape, jnp.bool_)
    return jnp.broadcast_to(jnp.asarray(state[name]["kernel"]) == ALIVE, shape)


def outgoing_magnitude(
    params: Mapping, producer: str, consumer: str, state: Mapping | None = None
) -> jax.Array:
    """``sum_k |w_ik|`` over the consumer's ALIVE weights reading each producer unit ``i``
    ([units]; sedated weights, which hold learned values behind a zero mask, do not count)."""
    width = unit_count(params, producer)
    kernel = params[consumer]["kernel"]
    w = jnp.where(_alive(state, consumer, kernel.shape), jnp.abs(kernel), 0.0)
    return jnp.sum(consumer_view(producer, consumer, w, width), axis=(0, 2))


def live_units(params: Mapping, state: Mapping | None, producer: str, consumer: str) -> jax.Array:
    """bool ``[units]``: the producer's units with an ALIVE incoming and an ALIVE outgoing weight.

    A unit the pruner has cut off (all its incoming or outgoing weights masked) computes nothing
    a re-initialisation could revive, since the masks zero its fresh weights; a remedy in a sparse
    network (:mod:`emrakul.controllers.with_remedy`) spends its replacements on live units only.
    Without a lifecycle (a dense network) every unit is live.
    """
    k_in, k_out = params[producer]["kernel"], params[consumer]["kernel"]
    width = unit_count(params, producer)
    incoming = jnp.any(_alive(state, producer, k_in.shape).reshape(-1, width), axis=0)
    out = consumer_view(producer, consumer, _alive(state, consumer, k_out.shape), width)
    return incoming & jnp.any(out, axis=(0, 2))


def _rows_of(params: Mapping, producer: str, consumer: str, units: jax.Array) -> jax.Array:
    """A bool mask of the consumer's kernel: True on the rows that read a marked unit."""
    kernel = params[consumer]["kernel"]
    width = unit_count(params, producer)
    shape = consumer_view(producer, consumer, np.empty(kernel.shape, np.bool_), width).shape
    return jnp.broadcast_to(units[None, :, None], shape).reshape(kernel.shape)


def reinit_units(params: PyTree, marked: dict[str, jax.Array], key: jax.Array) -> Rewrite:
    """The rewrite that re-initialises the marked units of each hidden layer.

    Args:
      params: the stack's params (``{"Dense_0": {"kernel", "bias"}, ...}``).
      marked: producer layer name -> bool ``[units]``, the units to re-initialise.
      key: PRNG key of the fresh incoming weights.

    Returns:
      A :class:`~emrakul.surgery.rewrite.Rewrite`: incoming weights drawn from LeCun's
      truncated normal (Flax's default kernel initialiser, variance ``1 / fan_in``), bias and
      outgoing weights zero, moments restarted on all of them.
    """
    rewrite = identity(params)
    keep, add, reset = (jax.tree.map(lambda x: x, t) for t in rewrite)  # mutable copies
    consumers = dict(hidden_layers(params))
    for j, (name, units) in enumerate(marked.items()):
        kernel = params[name]["kernel"]
        fan_in = int(np.prod(kernel.shape[:-1]))
        std = np.sqrt(1.0 / fan_in) / _TRUNCATED_STD
        fresh = std * jax.random.truncated_normal(
            jax.random.fold_in(key, j), -2.0, 2.0, kernel.shape, jnp.float32
        )
        cols = jnp.broadcast_to(units, kernel.shape)
        keep[name]["kernel"] = jnp.where(cols, 0.0, keep[name]["kernel"])
        add[name]["kernel"] = jnp.where(cols, fresh, add[name]["kernel"])
        reset[name]["kernel"] = cols | reset[name]["kernel"]
        if "bias" in params[name]:
            keep[name]["bias"] = jnp.where(units, 0.0, keep[name]["bias"])
            reset[name]["bias"] = units | reset[name]["bias"]
        rows = _rows_of(params, name, consumers[name], units)
        nxt = consumers[name]
        keep[nxt]["kernel"] = jnp.where(rows, 0.0, keep[nxt]["kernel"])
        reset[nxt]["kernel"] = rows | reset[nxt]["kernel"]
    return Rewrite(keep, add, reset)


def lowest(score: jax.Array, eligible: jax.Array, count: jax.Array) -> jax.Array:
    """bool ``[n]``: the ``count`` eligible entries with the lowest score (ties by index)."""
    order = jnp.argsort(jnp.where(eligible, score, jnp.inf), stable=True)
    rank = jnp.empty_like(order).at[order].set(jnp.arange(order.size))
    return eligible & (rank < count)


def hold(obs: Observation, rewrite) -> Decision:
    """A decision that leaves masks alone and applies ``rewrite`` (the dense remedies)."""
    zeros = leaf_scores(obs, jnp.zeros_like, obs.params)
    num = len(obs.layer_size)
    decision = make_decision(num, current_sparsity(obs), 0.0, zeros, zeros, False)
    return decision._replace(rewrite=rewrite)


def unit_scores(obs: Observation, name: str) -> jax.Array:
    """The observation's activation score of layer ``name``'s units (ones when absent)."""
    units = unit_count(obs.params, name)
    if obs.activations is None:
        return jnp.ones((units,), jnp.float32)
    score = jnp.asarray(obs.activations[name]["kernel"], jnp.float32)
    return jnp.broadcast_to(score, (units,))
