"""Small pytree helpers shared by the masks and the vital signs.

Every public function of Emrakul that takes two pytrees (params and grads, params and masks)
checks that their structures match and names the first leaf that differs, so that a user sees
``params['Dense_0']['kernel']`` rather than an opaque ``tree_map`` error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Filter = Callable[[tuple, Any], bool]


def path_str(path: tuple) -> str:
    """Formats a ``jax.tree_util`` key path as ``a/b/kernel``."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(str(k.name))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts) if parts else "<root>"


def leaf_paths(tree: PyTree) -> list[str]:
    """The ``path_str`` of every leaf of ``tree``, in flattening order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_same_structure(reference: PyTree, other: PyTree, ref_name: str, other_name: str) -> None:
    """Raises ``ValueError`` naming the difference when two pytrees differ in structure.

    Args:
      reference: the tree whose structure is authoritative (usually the params).
      other: the tree that must match it.
      ref_name: how to call ``reference`` in the message.
      other_name: how to call ``other`` in the message.
    """
    _reject_module(reference, ref_name)
    _reject_module(other, other_name)
    ref_def = jax.tree_util.tree_structure(reference)
    other_def = jax.tree_util.tree_structure(other)
    if ref_def == other_def:
        return
    ref_paths = leaf_paths(reference)
    other_paths = leaf_paths(other)
    missing = sorted(set(ref_paths) - set(other_paths))
    extra = sorted(set(other_paths) - set(ref_paths))
    detail = []
    if missing:
        detail.append(f"leaves in {ref_name} but not in {other_name}: {missing[:5]}")
    if extra:
        detail.append(f"leaves in {other_name} but not in {ref_name}: {extra[:5]}")
    if not detail:
        detail.append(f"{ref_def} vs {other_def}")
    raise ValueError(
        f"{other_name} must have the same pytree structure as {ref_name}; " + "; ".join(detail)
    )


def is_floating(x: Any) -> bool:
    """True when ``x`` is an array (or array-like) with a floating dtype."""
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def check_floating(tree: PyTree, name: str) -> None:
    """Raises ``TypeError`` naming the first leaf of ``tree`` whose dtype is not floating.

    Also runs :func:`check_params`, so a model object or a non-array leaf gets its own message.
    """
    check_params(tree, name)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not is_floating(leaf):
            raise TypeError(
                f"{name} leaf '{path_str(path)}' has dtype {jnp.result_type(leaf)}; Emrakul "
                "only tracks and prunes floating-point leaves. Exclude it with a filter."
            )


def default_filter(path: tuple, leaf: Any) -> bool:
    """The default choice of prunable leaves: floating arrays with at least two dimensions.

    Dense and Conv kernels are pruned; biases, norm scales and scalars are left alone.
    """
    del path
    return np.ndim(leaf) >= 2 and is_floating(leaf)


def select_leaves(tree: PyTree, filter_fn: Filter | None) -> PyTree:
    """A pytree of Python bools (static) saying which leaves ``filter_fn`` selects."""
    filter_fn = default_filter if filter_fn is None else filter_fn
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(filter_fn(p, x)), tree)


TREE_HINT = (
    "pass a pytree of arrays: a Flax Linen `variables['params']` dict, an NNX parameter state "
    "(`nnx.state(model, nnx.Param)`, or the `nnx.Param` part of "
    "`graphdef, params, rest = nnx.split(model, nnx.Param, ...)`), or Equinox parameters "
    "(`params, static = eqx.partition(model, eqx.is_inexact_array)`)"
)


def _reject_module(tree: PyTree, name: str) -> None:
    """Raises ``TypeError`` when ``tree`` is an NNX object (a Module, an Optimizer...)."""
    nnx = sys.modules.get("flax.nnx")
    base = nnx and (getattr(nnx, "Pytree", None) or getattr(nnx, "Object", None) or nnx.Module)
    if base is not None and isinstance(tree, base):
        raise TypeError(
            f"{name} is an NNX object ({type(tree).__name__}), not its parameter state; split it "
            "first: `graphdef, params, rest = nnx.split(model, nnx.Param, ...)` (or "
            "`params = nnx.state(model, nnx.Param)`), train `params`, and run the model as "
            "`nnx.merge(graphdef, emrakul.masked(params, opt_state), rest)`"
        )


def _is_array_like(leaf: Any) -> bool:
    if isinstance(leaf, jax.Array | np.ndarray | np.generic | bool | int | float | complex):
        return True
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")  # e.g. jax.ShapeDtypeStruct


def check_params(tree: PyTree, name: str = "params") -> None:
    """Raises ``TypeError`` with a fix when ``tree`` is not a parameter pytree Emrakul supports.

    Supported: any pytree whose leaves are arrays (or Python numbers): Flax Linen dicts, NNX
    ``nnx.State`` of parameters, Equinox trees filtered with ``eqx.partition``, optax-style
    nested dicts/lists/tuples/NamedTuples. Rejected, with a message saying what to pass: an NNX
    object (``nnx.Module``, ``nnx.Optimizer``) instead of its state, NNX random-number state
    (``nnx.RngKey``/``nnx.RngCount``, as in ``nnx.state(model)`` of a model with ``rngs``), PRNG
    key arrays, and non-array leaves (strings, functions, arbitrary objects - an unfiltered
    Equinox model holds its activation functions as leaves). Checks run at trace time only.

    Args:
      tree: the candidate parameter tree.
      name: how to call it in the message.
    """
    _reject_module(tree, name)
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and hasattr(nnx, "RngState"):
        flat = jax.tree_util.tree_flatten_with_path(
            tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
        )[0]
        for path, leaf in flat:
            if isinstance(leaf, nnx.RngState):
                raise TypeError(
                    f"{name} leaf '{path_str(path)}' is an nnx.{type(leaf).__name__} "
                    "(random-number state), not a parameter; pass only the parameters: "
                    "`nnx.state(model, nnx.Param)` or `nnx.split(model, nnx.Param, ...)`"
                )
    eqx = sys.modules.get("equinox")
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = f"{name} leaf '{path_str(path)}'"
        if not _is_array_like(leaf):
            what = type(leaf).__name__
            shown = repr(leaf)
            if len(shown) <= 40 and not shown.startswith("<"):
                what = f"{what} ({shown})"
            fix = TREE_HINT
            if eqx is not None and isinstance(tree, eqx.Module):
                fix = (
                    "an Equinox model holds functions and other static fields as leaves: pass "
                    "`params, static = eqx.partition(model, eqx.is_inexact_array)` and run "
                    "`eqx.combine(emrakul.masked(params, opt_state), static)`"
                )
            raise TypeError(f"{where} is a {what}, not an array; {fix}")
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            raise TypeError(f"{where} is a PRNG key ({dtype}), not a parameter; {TREE_HINT}")
