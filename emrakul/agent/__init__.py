"""The Magistrate as deployed: the learned pruning agent's network and what it observes.

The Magistrate decides *surgery plans* (:mod:`emrakul.controllers.plan_space`): per-layer
allocations, score mixes and schedules for the whole run, refined as the host trains.

* :mod:`~emrakul.agent.spaces`: the observation space (``AgentObs``, ``check_obs``);
* :mod:`~emrakul.agent.features`: what the agent observes (vital signs, ReDo activation
  scores, loss health, static layer sizes), padded to a fixed region / layer count;
* :mod:`~emrakul.agent.encoder`: the Phage encoder shared over regions and message passing
  along the layer chain;
* :mod:`~emrakul.agent.plan_network`: the plan network, an observation in, a raw surgery plan
  (and a critic value) out.

``policies/`` is a data folder (the policy shipped with the package), not a module.

A trained policy is deployed as ``emrakul.controllers.magistrate(policy=PATH)``. Training it is
the lab's job: :mod:`emrakul.lab.meta` (``es_train`` for evolution strategies, ``ppo_plans`` /
``ppo_train`` for PPO).
"""

from emrakul.agent import encoder, features, plan_network, spaces

__all__ = ["encoder", "features", "plan_network", "spaces"]
