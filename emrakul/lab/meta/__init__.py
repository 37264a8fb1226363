"""Meta-training of the learned controller: the Magistrate's surgery plans, by ES and by PPO.

* :mod:`~emrakul.lab.meta.es`: evolution strategies (evosax's OpenAI-ES) over a genome written
  into every host's controller state, scored by the hosts' validation accuracy, all candidates
  and seeds in one compiled program;
* :mod:`~emrakul.lab.meta.es_search`: a resumable ES search over host groups (checkpoints, logs);
* :mod:`~emrakul.lab.meta.es_train`: meta-training the plan network's parameters by ES;
* :mod:`~emrakul.lab.meta.open_loop`: the open-loop ceiling, one fixed surgery plan tuned by ES;
* :mod:`~emrakul.lab.meta.plan_rollout`: rolling out the plan policy on host runs, with
  exploration held per phase;
* :mod:`~emrakul.lab.meta.ppo`: PPO building blocks (the clipped loss, GAE, minibatches);
* :mod:`~emrakul.lab.meta.ppo_plans`: PPO with group-relative advantages on the plan network;
* :mod:`~emrakul.lab.meta.ppo_train`: the resumable PPO meta-training loop (checkpoints, logs).

``python -m experiments.train_agent`` drives them and writes the deployable policy file.
"""
