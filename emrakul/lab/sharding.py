"""Seeds (or a population of hosts) sharded across devices: a 1-D mesh along the seeds axis.

A sweep vmaps its seeds, so every leaf of the run state - params, optimizer moments, the
lifecycle (masks), the vital signs, the controller's state, the RNG keys - carries a leading
seeds axis. Sharding that axis over a 1-D :class:`jax.sharding.Mesh` (axis name ``"seeds"``)
with ``NamedSharding(mesh, P("seeds"))`` puts ``seeds / num_devices`` whole seeds on each
device; the vmapped program then has no cross-seed communication at all, and the compiler's
sharding propagation (GSPMD: Xu et al. 2021, "GSPMD: General and Scalable Parallelization for
ML Computation Graphs", arXiv:2105.04663) keeps every intermediate and output on the seeds
axis too, so masks and vital signs follow the params' sharding without annotations. See the
JAX guide "Distributed arrays and automatic parallelization"
(https://docs.jax.dev/en/latest/notebooks/Distributed_arrays_and_automatic_parallelization.html)
and "Multi-process environments" (https://docs.jax.dev/en/latest/multi_process.html) for the
APIs used here::

    mesh = seed_mesh()                        # all devices (of all processes)
    state = shard_seeds(jax.vmap(trainer.init)(keys), mesh)
    run = jax.jit(jax.vmap(trainer.run, in_axes=(0, None)), static_argnums=1,
                  in_shardings=(seed_shardings(state, mesh),))

Several hosts (processes) join one mesh after :func:`initialize_distributed`; then
``jax.devices()`` lists every process's devices, and arrays are global (use :func:`to_host` to
read one back on every process).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from emrakul.masks import native

AXIS = "seeds"
SEED_LOOPS = ("vmap", "map")

PyTree = Any


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with the axis ``"seeds"`` over ``devices``.

    Args:
      devices: the devices, in order; ``None``: ``jax.devices()`` (every device of every
        process after :func:`initialize_distributed`).

    Returns:
      The :class:`jax.sharding.Mesh`.

    Raises:
      ValueError: ``devices`` is empty or lists a device twice.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("seed_mesh needs at least one device")
    if len({d.id for d in devices}) != len(devices):
        raise ValueError(f"seed_mesh got a device twice: {devices}")
    return Mesh(np.array(devices, dtype=object), (AXIS,))


def over_seeds(fn: Callable[..., Any], loop: str = "vmap", mesh: Mesh | None = None) -> Callable:
    """Lifts ``fn`` (of one seed's arguments) to arguments with a leading seeds axis.

    Args:
      fn: a function of pytrees for one seed; its outputs get the leading seeds axis.
      loop: ``"vmap"``: :func:`jax.vmap`, one batched program (the fastest where a batch is
        cheap, e.g. on an accelerator); XLA picks kernels by the batch shape, so a seed's floats
        can differ in the last bits with the number of seeds in the program or per device.
        ``"map"``: :func:`jax.lax.map`, every seed computed one after the other by the same
        one-seed program, so a seed's results do not depend on which other seeds run with it,
        or on sharding (bit-identical on XLA:CPU in ``tests/test_sharding.py``; XLA does not
        promise it). With a ``mesh``, ``"map"`` runs under :func:`jax.shard_map`:
        each device maps the one-seed program over its own seeds (every argument and output
        leaf must then carry the seeds axis). ``"vmap"`` with a mesh is the plain ``vmap``;
        give ``jax.jit`` the :func:`seed_shardings`.
      mesh: a mesh from :func:`seed_mesh`, or ``None``.

    Returns:
      The lifted function (not jitted).

    Raises:
      ValueError: an unknown ``loop``.
    """
    if loop not in SEED_LOOPS:
        raise ValueError(f"seed loop must be one of {SEED_LOOPS}, got {loop!r}")
    if loop == "vmap":
        return jax.vmap(fn)

    def mapped(*args):
        return jax.lax.map(lambda a: fn(*a), args)

    if mesh is None:
        return mapped
    # check_vma=False: the one-seed program's scans carry values that shard_map's
    # varying-manual-axes check cannot type (none of them crosses devices).
    return jax.shard_map(mapped, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=False)


def check_divisible(num_seeds: int, mesh: Mesh) -> None:
    """Raises a clear :class:`ValueError` unless ``num_seeds`` splits evenly over ``mesh``."""
    size = mesh.shape[AXIS]
    if num_seeds < 1 or num_seeds % size:
        lower = num_seeds // size * size
        hint = f"{lower} or {lower + size}" if lower else f"{size}"
        raise ValueError(
            f"cannot shard {num_seeds} seeds over {size} devices: the number of seeds must be a "
            f"positive multiple of the device count (use e.g. {hint} seeds, or run unsharded)"
        )


def _leading(tree: PyTree) -> int:
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(tree) if np.ndim(x) > 0}
    if not sizes:
        raise ValueError("shard_seeds: no leaf has a leading axis to shard")
    if len(sizes) > 1:
        raise ValueError(
            f"shard_seeds: leaves have different leading sizes {sorted(sizes)}; pass num_seeds"
        )
    return sizes.pop()


def seed_shardings(tree: PyTree, mesh: Mesh, num_seeds: int | None = None) -> PyTree:
    """The sharding of every leaf of a vmapped tree (arrays or ``jax.ShapeDtypeStruct``).

    A leaf whose leading dimension equals ``num_seeds`` is split along it
    (``NamedSharding(mesh, P("seeds"))``); any other leaf (scalars, shared constants) is
    replicated (``NamedSharding(mesh, P())``).

    Args:
      tree: a pytree of arrays or shape structs (e.g. ``jax.eval_shape`` of the state).
      mesh: a mesh from :func:`seed_mesh`.
      num_seeds: the seeds axis length; ``None``: the (single) leading size of the leaves.

    Returns:
      A pytree of :class:`jax.sharding.NamedSharding` with the structure of ``tree``; use it
      as ``jax.jit``'s ``in_shardings`` / ``out_shardings``.

    Raises:
      ValueError: ``num_seeds`` is not a multiple of the number of devices in ``mesh``.
    """
    num_seeds = _leading(tree) if num_seeds is None else int(num_seeds)
    check_divisible(num_seeds, mesh)
    split, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: split if np.ndim(x) > 0 and np.shape(x)[0] == num_seeds else replicated, tree
    )


def shard_seeds(tree: PyTree, mesh: Mesh, num_seeds: int | None = None) -> PyTree:
    """Places a vmapped tree on ``mesh``, split along its leading seeds axis.

    Args:
      tree: a pytree of arrays whose per-seed leaves have a leading axis of ``num_seeds``.
      mesh: a mesh from :func:`seed_mesh`.
      num_seeds: the seeds axis length; ``None``: the (single) leading size of the leaves.

    Returns:
      The same tree as global ``jax.Array``s, per-seed leaves sharded ``P("seeds")`` (each
      device holds ``num_seeds / num_devices`` whole seeds), other leaves replicated.

    Raises:
      ValueError: ``num_seeds`` is not a multiple of the number of devices in ``mesh``.
    """
    shardings = seed_shardings(tree, mesh, num_seeds)
    if all(s.is_fully_addressable for s in jax.tree.leaves(shardings)):
        return jax.device_put(tree, shardings)

    def put(x, s):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global
            return jax.device_put(x, s)
        # The mesh spans several processes: every process holds the whole (identical) value
        # and contributes the shards of its own devices.
        return jax.make_array_from_callback(np.shape(x), s, lambda i: np.asarray(x)[i])

    return jax.tree.map(put, tree, shardings)


def abstract_sharded(tree: PyTree, mesh: Mesh, num_seeds: int | None = None) -> PyTree:
    """``jax.ShapeDtypeStruct``s of ``tree`` carrying :func:`seed_shardings`.

    Orbax restores a checkpoint straight onto the mesh when given these.
    """
    shardings = seed_shardings(tree, mesh, num_seeds)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def to_host(tree: PyTree) -> PyTree:
    """Every leaf as a numpy array on every process (gathered when the array spans processes)."""
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)):
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, tree)


_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+):([0-9]{1,5})$")


def initialize_distributed(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Joins a multi-process (multi-host) JAX runtime: a thin, validating wrapper.

    Calls :func:`jax.distributed.initialize`, which must run in every process before any JAX
    computation; afterwards ``jax.devices()`` lists the devices of all processes and
    :func:`seed_mesh` spans them. ``None`` arguments are left to JAX's cluster auto-detection
    (SLURM, Open MPI, Cloud TPU); on a plain set of machines give all three.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: the total number of processes (>= 1).
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: restrict this process to these local devices (optional).

    Raises:
      ValueError: a malformed address, ``num_processes < 1``, or ``process_id`` out of range.
    """
    if coordinator_address is not None:
        m = _ADDRESS.match(coordinator_address)
        if m is None or not 0 < int(m.group(2)) < 65536:
            raise ValueError(
                f"coordinator_address must be 'host:port' (e.g. '10.0.0.1:1234'), got "
                f"{coordinator_address!r}"
            )
    if num_processes is not None and int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None:
        if int(process_id) < 0:
            raise ValueError(f"process_id must be >= 0, got {process_id}")
        if num_processes is not None and int(process_id) >= int(num_processes):
            raise ValueError(
                f"process_id must be in [0, num_processes={num_processes}), got {process_id}"
            )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=None if num_processes is None else int(num_processes),
        process_id=None if process_id is None else int(process_id),
        local_device_ids=None if local_device_ids is None else list(local_device_ids),
    )


def warn_native_on_mesh(mesh, seed_loop: str) -> None:
    """The native top-k custom call has no sharding rule: in a ``vmap`` over seeds split on a
    mesh, XLA gathers its inputs onto every device (results stay exact)."""
    if mesh is not None and seed_loop == "vmap" and native.enabled():
        warnings.warn(
            "the native top-k kernel (run.native_topk / emrakul.masks.native) has no sharding "
            "rule: with seed_loop='vmap' on a mesh every device gathers and computes all seeds' "
            "selections (exact, but slower and not local); use run.seed_loop='map' "
            "(shard_map keeps each device's seeds local) or leave the kernel off",
            stacklevel=3,
        )


def check_seed_loop_marker(directory: str, seed_loop: str, resuming: bool) -> None:
    """Records the seed loop beside a fresh run's checkpoints (``<directory>.seed_loop``), or
    refuses to resume checkpoints written with another one (no marker: ``"vmap"``)."""
    marker = f"{directory}.seed_loop"
    if not resuming:
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(marker) or ".", exist_ok=True)
            with open(marker, "w") as f:
                f.write(seed_loop)
        return
    before = "vmap"
    if os.path.exists(marker):
        with open(marker) as f:
            before = f.read().strip()
    if before != seed_loop:
        raise ValueError(
            f"the checkpoints in {os.path.dirname(directory)} were written with "
            f"seed_loop={before!r}; resuming them with seed_loop={seed_loop!r} would mix two "
            f"programs whose floats differ. Use config.run.seed_loop={before!r} or a new workdir."
        )
