"""The Magistrate as deployed: the learned pruning agent's networks and what it observes.

* :mod:`~emrakul.agent.networks`: Phage encoder shared over regions, Magistrate pooling and
  message passing, Surgeon General / Specialist heads, centralised critic;
* :mod:`~emrakul.agent.distributions`: the action distributions;
* :mod:`~emrakul.agent.features`: what the agent observes (vital signs, ReDo activation
  scores, loss health), padded to a fixed region / layer count.

A trained policy is deployed as ``emrakul.controllers.magistrate(policy=PATH)``. Training it
(environments, reward, PPO) is the lab's job: :mod:`emrakul.lab.meta`.
"""

from emrakul.agent import distributions, features, networks

__all__ = ["distributions", "features", "networks"]
