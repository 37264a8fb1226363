"""The Magistrate: the learned pruning agent (issue 4, in progress).

Landed so far: the agent's networks (Phage encoder shared over regions, Magistrate pooling and
message passing, Surgeon General / Specialist heads, centralised critic), its action
distributions, the trauma-aware reward, and the PPO pieces (GAE, clipped loss, minibatches).
Still to come: ``emrakul.env.SurgeryEnv``, meta-training, and deployment as a controller.
"""

from emrakul.agent import distributions, networks, ppo, reward

__all__ = ["distributions", "networks", "ppo", "reward"]
