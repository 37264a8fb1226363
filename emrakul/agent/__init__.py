"""The Magistrate: the learned pruning agent.

* :mod:`~emrakul.agent.networks`: Phage encoder shared over regions, Magistrate pooling and
  message passing, Surgeon General / Specialist heads, centralised critic;
* :mod:`~emrakul.agent.distributions`: the action distributions;
* :mod:`~emrakul.agent.features`: what the agent observes (vital signs, ReDo activation
  scores, loss health), padded to a fixed region / layer count;
* :mod:`~emrakul.agent.reward`: the trauma-aware reward, every term logged;
* :mod:`~emrakul.agent.ppo` and :mod:`~emrakul.agent.train`: PPO (rlax GAE and clipped
  surrogate) over a population of hosts (:class:`emrakul.env.SurgeryEnv`,
  :func:`emrakul.env.population`), all in one compiled update.

A trained policy is deployed as ``emrakul.controllers.magistrate(policy=PATH)``.
"""

from emrakul.agent import distributions, features, networks, ppo, reward

__all__ = ["distributions", "features", "networks", "ppo", "reward"]
