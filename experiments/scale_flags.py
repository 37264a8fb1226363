"""Command-line flags shared by the experiments that scale out: seed sharding and multi-host.

``--shard`` splits the vmapped seeds of every run over a 1-D mesh of all devices
(:mod:`emrakul.lab.sharding`); ``--coordinator_address``, ``--num_processes`` and ``--process_id``
join a multi-process JAX runtime (:func:`emrakul.lab.sharding.initialize_distributed`). Defined once
here so that several absl apps can share them (absl refuses a flag defined twice).
"""

from __future__ import annotations

from absl import flags

from emrakul.lab.sharding import initialize_distributed

SHARD = flags.DEFINE_bool("shard", False, "Split the seeds over all devices (1-D mesh).")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of rank 0.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def start() -> bool:
    """Joins the multi-process runtime if any multi-host flag is given (before any JAX work).

    Returns:
      Whether this process writes the reports: True in a single process, and in process 0 of
      several (the others compute their shards and return).
    """
    if any(f.present for f in (COORDINATOR, NUM_PROCESSES, PROCESS_ID)):
        initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    import jax

    return jax.process_index() == 0
