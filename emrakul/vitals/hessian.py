"""Hutchinson estimate of the diagonal of the Hessian of a loss.

For a random probe ``z`` with independent Rademacher (+-1) entries, ``E[z * (H z)] = diag(H)``
(Hutchinson, 1990, "A stochastic estimator of the trace of the influence matrix for Laplacian
smoothing splines"; applied to the Hessian diagonal by Bekas, Kokiopoulou & Saad, 2007, and used
by AdaHessian, Yao et al., 2021, and PyHessian, Yao et al., 2020). Entry ``i`` of one probe's
estimate is ``H_ii + sum_{j != i} H_ij z_i z_j``: it is unbiased with variance
``sum_{j != i} H_ij**2``, so a Hessian that is diagonal is recovered exactly by a single probe,
and the standard error of a ``k``-probe average is ``sqrt(sum_{j != i} H_ij**2 / k)``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp

from emrakul._tree import PyTree, check_floating
from emrakul.vitals.statistics import stat_dtype


def _rademacher_like(key: jax.Array, params: PyTree) -> PyTree:
    """A pytree like ``params`` of independent +-1 entries in each leaf's dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    z = [
        jax.random.rademacher(k, jnp.shape(p), jnp.result_type(p))
        for k, p in zip(keys, leaves, strict=False)
    ]
    return treedef.unflatten(z)


def hessian_diag(
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: jax.Array,
    num_probes: int = 1,
) -> PyTree:
    """Hutchinson's estimate of ``diag(H)``, ``H`` the Hessian of ``loss_fn`` at ``params``.

    Each probe costs one Hessian-vector product, computed forward-over-reverse
    (``jax.jvp`` of ``jax.grad``: about the cost of two or three gradients, no Hessian is ever
    formed). The probes are evaluated one after the other by a ``lax.scan`` that carries the
    running sum, so memory stays O(params) whatever ``num_probes`` is (a ``vmap`` over probes
    would hold ``num_probes`` copies of every activation). To estimate a batch of parameter
    sets, ``jax.vmap`` this function.

    Args:
      loss_fn: ``params -> scalar loss``; must be twice differentiable (close over the batch).
      params: the point at which the Hessian is taken; floating leaves.
      key: a ``jax.random`` key; a different key gives independent probes.
      num_probes: static Python int >= 1, the number of Rademacher probes averaged. The
        standard error of entry ``i`` is ``sqrt(sum_{j != i} H_ij**2 / num_probes)``.

    Returns:
      A pytree shaped like ``params`` (dtype promoted to at least float32) with the estimate.

    Raises:
      ValueError: if ``num_probes`` is not a Python int >= 1.
      TypeError: if a leaf of ``params`` is not floating.
    """
    try:  # Python or NumPy ints; not floats, bools or traced values
        n = None if isinstance(num_probes, bool) else operator.index(num_probes)
    except Exception:
        n = None
    if n is None or n < 1:
        raise ValueError(f"num_probes must be a static Python int >= 1, got {num_probes!r}")
    num_probes = n
    check_floating(params, "params")
    grad_fn = jax.grad(loss_fn)

    def probe(total, k):
        z = _rademacher_like(k, params)
        hz = jax.jvp(grad_fn, (params,), (z,))[1]
        total = jax.tree_util.tree_map(
            lambda t, zi, hzi: t + (zi * hzi).astype(t.dtype), total, z, hz
        )
        return total, None

    zeros = jax.tree_util.tree_map(
        lambda p: jnp.zeros(jnp.shape(p), stat_dtype(jnp.result_type(p))), params
    )
    keys = jax.random.split(key, num_probes)
    total, _ = jax.lax.scan(probe, zeros, keys)
    return jax.tree_util.tree_map(lambda t: t / num_probes, total)
