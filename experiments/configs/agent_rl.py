"""RL-host population for meta-training the Magistrate: CartPole DQNs pruned while they learn.

``python -m experiments.train_agent --workdir DIR --config experiments/configs/agent_rl.py``
meta-trains on :class:`emrakul.lab.meta.rl_env.DQNSurgeryEnv` hosts instead of MNIST-1D classifiers.

Fields:

* ``rl``: the :class:`emrakul.lab.hosts.dqn.DQNConfig` fields of every host (``controller`` is
  ignored: the agent is the controller): ``experiments/configs/cartpole_dqn.py``'s with a 95%
  target and ``mlp_hidden = (64, 64)``. CartPole-v1, 50k environment steps, 4 vectorised
  environments, one update per 4 steps, a surgery (one agent decision) every 500 updates: 24
  decisions per episode; the pruning settings of the MinAtar sweep (95% target, ERK, the GMP
  schedule the actions correct running from 20% to 80% of training).
* ``population``: the MLP hidden widths of the host groups, ``;``-separated (``"64,64;128,128"``);
  empty: one group with ``rl.mlp_hidden``. Every group runs ``--hosts`` seeds.
* ``return_scale``: the return that scores 1 (0: the game's default,
  :data:`emrakul.lab.meta.rl_env.RETURN_SCALES`).
* ``probe_size``: replayed transitions per probe TD loss (the loss-spike measurement).
"""

import ml_collections

from experiments.configs import cartpole_dqn


def get_config() -> ml_collections.ConfigDict:
    """The RL-host meta-training config."""
    c = ml_collections.ConfigDict()
    c.rl = cartpole_dqn.get_config().rl  # the smoke test's DQN, pruned to 95%
    c.rl.sparsity = 0.95
    c.rl.mlp_hidden = (64, 64)
    c.population = "64,64;128,128"
    c.return_scale = 0.0
    c.probe_size = 256
    return c
