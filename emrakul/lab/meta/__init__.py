"""Meta-training of the learned controller: pruning as an environment, its reward, PPO.

* :mod:`~emrakul.lab.meta.env`: ``SurgeryEnv``, a classifier host's training run as a
  gymnax-style environment (one step = one surgery interval), vmappable over a population;
* :mod:`~emrakul.lab.meta.rl_env`: the same over a DQN host;
* :mod:`~emrakul.lab.meta.reward`: the trauma-aware reward, every term logged;
* :mod:`~emrakul.lab.meta.rollout`: one episode of a population of hosts under one policy;
* :mod:`~emrakul.lab.meta.ppo` and :mod:`~emrakul.lab.meta.train`: PPO (rlax GAE and clipped
  surrogate) over a population of hosts, all in one compiled update.
"""
