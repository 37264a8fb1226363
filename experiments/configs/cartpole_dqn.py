"""A CartPole DQN pruned while it learns: the RL smoke test of ``experiments.train``.

    python -m experiments.train --workdir /tmp/cartpole --config experiments/configs/cartpole_dqn.py

Fields:

* ``compare``: controllers to run, comma-separated (``"dense,gmp"``).
* ``seeds`` / ``seed_offset``: seeds ``seed_offset ... seed_offset + seeds - 1``, vmapped in one
  compiled program.
* ``chunk``: surgery intervals per compiled chunk (one progress line each).
* ``rl``: the :class:`emrakul.lab.hosts.dqn.DQNConfig` fields (50k environment steps, 4 vectorised
  environments, one update per 4 steps, a surgery every 500 updates, 90% ERK target, GMP from
  20% to 80% of training).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The CartPole DQN smoke-test config."""
    c = ml_collections.ConfigDict()
    c.compare = "dense,gmp"
    c.seeds = 2
    c.seed_offset = 0
    c.chunk = 5
    c.rl = ml_collections.ConfigDict(
        {
            "env_name": "CartPole-v1",
            "num_envs": 4,
            "total_env_steps": 50_000,
            "buffer_size": 50_000,
            "batch_size": 64,
            "learning_starts": 1_000,
            "train_every": 4,
            "target_update_every": 500,
            "lr": 5e-4,
            "adam_eps": 1e-8,
            "eps_end": 0.05,
            "eps_fraction": 0.1,
            "prune_every": 500,
            "sparsity": 0.9,
            "distribution": "erk",
            "prune_start": 0.2,
            "prune_end": 0.8,
        }
    )
    return c
