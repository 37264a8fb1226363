"""The MinAtar sweep: DQN on gymnax MinAtar games, pruned while it learns.

``python -m experiments.minatar_sweep --workdir DIR [--config.FIELD=VALUE ...]``. A *cell* is one
game x arm x sparsity x width, with every seed vmapped in one compiled program. List-valued
fields are comma-separated strings (ml_collections cannot override a list from the command
line), so a subset of the sweep is one flag away, e.g. ``--config.games=Breakout-MinAtar
--config.arms=dense,gmp --config.widths=1``; several sessions can share one ``DIR`` and each
runs the cells that are not finished yet.

Every field, with its meaning:

* ``games``: comma-separated gymnax environment ids with discrete actions. ``*-MinAtar`` games
  use MinAtar's CNN; any other id (``CartPole-v1`` in the tests) uses ``dqn.mlp_hidden``'s MLP.
* ``arms``: comma-separated arms. An arm is a controller name of ``emrakul.controllers.NAMES``
  (``dense``, ``gmp``, ``rigl``, ..., ``magistrate``), optionally suffixed ``_gap`` (e.g.
  ``dense_gap``, ``gmp_gap``): the same controller on the MinAtar network with global average
  pooling instead of the flatten layer (Sokar & Castro 2025's control; MinAtar games only).
  ``dense`` arms ignore ``sparsities`` (one cell per width, recorded with sparsity 0).
  ``gmp`` prunes from ``dqn.prune_start`` to ``dqn.prune_end``; the other controllers use
  their defaults, except ``magistrate`` (below).
* ``widths``: comma-separated positive ints, the MinAtar network's width multipliers (16 * w
  conv channels, 128 * w hidden units; with ``dqn.network=impala`` the Impala ResNet's
  (16, 32, 32) * w channels and 256 * w hidden units). The normalising baseline is ``dense`` at
  width 1.
* ``seeds``: seeds per cell, vmapped in one program; the seeds are
  ``seed_offset, ..., seed_offset + seeds - 1`` (``jax.random.PRNGKey(seed)``). A cell that
  already has some of these seeds in ``results.jsonl`` runs only the missing ones.
* ``seed_offset``: the first seed.
* ``sparsities``: comma-separated final target sparsities in [0, 1) of the pruning arms
  (default ``0.95,0.9``: Obando-Ceron et al. 2024's 95% and the 90% arm).
* ``pooling``: ``flatten`` (MinAtar's network) or ``gap``: the pooling of arms without the
  ``_gap`` suffix.
* ``chunk``: surgery intervals per compiled chunk: the granularity of the progress line and of
  the orbax checkpoint an interrupted cell resumes from. Chunks are all this long except
  possibly the last (one more compilation when ``chunk`` does not divide the intervals).
* ``final_fraction``: a run's *final return* is the mean return of the training episodes that
  ended in the last ``final_fraction`` of its surgery intervals (default 0.1: the last 10%).
* ``dqn.*``: the :class:`emrakul.lab.hosts.dqn.DQNConfig` fields that are not set per cell
  (``env_name``, ``width``, ``pooling``, ``controller`` and ``sparsity`` come from the cell):

  * ``num_envs``: environments stepped in parallel per vectorised step.
  * ``total_env_steps``: environment steps per run, all environments and the warm-up
    included (rounded down to whole surgery intervals). Obando-Ceron et al. 2024 run 10M;
    the default is 500k, a budget a small CPU machine can sweep.
  * ``buffer_size``: replay capacity (transitions).
  * ``batch_size``: transitions per gradient update.
  * ``learning_starts``: environment steps of uniformly random acting before learning.
  * ``train_every``: environment steps (over all environments) per gradient update.
  * ``target_update_every``: gradient updates between target-network copies.
  * ``gamma``, ``lr``, ``adam_eps``, ``huber_delta``: discount, Adam's learning rate and
    epsilon, the Huber loss threshold.
  * ``eps_start``, ``eps_end``, ``eps_fraction``: ε-greedy decays linearly from ``eps_start``
    to ``eps_end`` over the first ``eps_fraction`` of ``total_env_steps``.
  * ``mlp_hidden``: hidden widths of the MLP used for non-MinAtar games, e.g. ``"(64, 64)"``.
  * ``network``: ``minatar`` (MinAtar's CNN) or ``impala`` (the Impala ResNet of Espeholt et
    al. 2018, where Obando-Ceron et al. 2024 report their gains; ``_gap`` arms pool it too).
  * ``distribution``: per-layer sparsity budgets, ``erk`` or ``uniform``.
  * ``prune_start``, ``prune_end``: when pruning starts and ends, as fractions of the updates
    (GMP's schedule; the deployed Magistrate follows the window of its policy file's plan
    space instead).
  * ``prune_every``: gradient updates per surgery interval (one learning-curve point each).

* ``magistrate.policy``: the policy file the ``magistrate`` arm deploys
  (``experiments.train_agent``'s ``WORKDIR/policy.msgpack``, loaded by
  ``emrakul.controllers.make("magistrate", policy=PATH)``). Empty: the policy shipped in the
  package (refused before anything runs if the package ships none).
* ``magistrate.policies``: further policy files as comma-separated ``NAME=PATH`` pairs; each
  enables the arm ``magistrate_NAME``, the same controller deploying the policy file at PATH
  (e.g. ``wide=/tmp/agent_wide/policy.msgpack``, arm ``magistrate_wide``).

The ``dqn.*`` settings and the pooling are recorded in ``DIR/sweep_config.json`` on the first
run; a later invocation with different values is refused (start a new ``DIR``), so results
with different budgets never mix.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The MinAtar sweep config."""
    c = ml_collections.ConfigDict()
    c.games = "Breakout-MinAtar,SpaceInvaders-MinAtar,Freeway-MinAtar"
    c.arms = "dense,gmp,magistrate"
    c.widths = "1,2"
    c.seeds = 5
    c.seed_offset = 0
    c.sparsities = "0.95,0.9"
    c.pooling = "flatten"
    c.chunk = 10
    c.final_fraction = 0.1
    c.dqn = ml_collections.ConfigDict(
        {
            "num_envs": 4,
            "total_env_steps": 500_000,
            "buffer_size": 100_000,
            "batch_size": 32,
            "learning_starts": 1_000,
            "train_every": 4,
            "target_update_every": 250,
            "gamma": 0.99,
            "lr": 1e-4,
            "adam_eps": 3.125e-4,
            "eps_start": 1.0,
            "eps_end": 0.01,
            "eps_fraction": 0.05,
            "huber_delta": 1.0,
            "mlp_hidden": (64, 64),
            "network": "minatar",
            "distribution": "erk",
            "prune_start": 0.2,
            "prune_end": 0.8,
            "prune_every": 1000,
        }
    )
    c.magistrate = ml_collections.ConfigDict({"policy": "", "policies": ""})
    return c
