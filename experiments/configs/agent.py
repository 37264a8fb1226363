"""Host population for meta-training the Magistrate (small hosts, short runs).

The same fields as ``default.py`` (documented there); smaller, so that one PPO iteration (one
whole training run of every host in the population) is cheap on a CPU:
MLP 40-64-64-10, 1000 host steps, a surgery (one agent decision) every 50 steps, 95% target.

``population``: the hidden widths of the host groups ``experiments.train_agent`` meta-trains
on, ``;``-separated (``"64,64;32,32,32"``); empty: one group with ``host.width``. Every group
runs ``--hosts`` seeds.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
    """The meta-training host config."""
    c = default.get_config()
    c.host.width = (64, 64)
    c.train.steps = 1000
    c.prune.every = 50
    c.prune.sparsity = 0.95
    c.population = ""
    return c
