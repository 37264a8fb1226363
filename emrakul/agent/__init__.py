"""The Magistrate as deployed: the learned pruning agent's networks and what it observes.

* :mod:`~emrakul.agent.spaces`: the observation and action spaces (``AgentObs``,
  ``AgentAction``, ``PolicyParams``, the per-region decisions);
* :mod:`~emrakul.agent.encoder`: the Phage encoder shared over regions, Magistrate pooling and
  message passing;
* :mod:`~emrakul.agent.heads`: the Surgeon General / Specialist heads and the centralised critic;
* :mod:`~emrakul.agent.networks`: the actor-critic ``Agent`` (and every public name above);
* :mod:`~emrakul.agent.distributions` and :mod:`~emrakul.agent.policy`: the action
  distributions, sampling, the deployed mode, log-probabilities and entropies;
* :mod:`~emrakul.agent.features`: what the agent observes (vital signs, ReDo activation
  scores, loss health), padded to a fixed region / layer count.

A trained policy is deployed as ``emrakul.controllers.magistrate(policy=PATH)``. Training it
(environments, reward, PPO) is the lab's job: :mod:`emrakul.lab.meta`.
"""

from emrakul.agent import distributions, encoder, features, heads, networks, policy, spaces

__all__ = ["distributions", "encoder", "features", "heads", "networks", "policy", "spaces"]
