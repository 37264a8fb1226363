"""The Magistrate: the learned pruning agent (issue 4, in progress).

Landed so far: the agent's networks (Phage encoder shared over regions, Magistrate pooling and
message passing, Surgeon General / Specialist heads, centralised critic), its action
distributions, its observation features, the trauma-aware reward, the PPO pieces (GAE, clipped
loss, minibatches), and ``emrakul.env.SurgeryEnv`` with the action-driven controller
(``emrakul.controllers.magistrate``). Still to come: meta-training (``experiments.train_agent``),
deployment of a frozen policy as a controller, and the issue's measurements.
"""

from emrakul.agent import distributions, features, networks, ppo, reward

__all__ = ["distributions", "features", "networks", "ppo", "reward"]
