"""Experiment sweeps over the resumable grid (:mod:`emrakul.lab.grid`).

* :mod:`~emrakul.lab.sweeps.minatar`: DQN on MinAtar games pruned while it learns (plan, run,
  report).
* :mod:`~emrakul.lab.sweeps.classifier`: classifier controllers x target sparsities.
* :mod:`~emrakul.lab.sweeps.classifier_compare`: the main job: controllers on one classifier
  host, its tables and plots.
* :mod:`~emrakul.lab.sweeps.dqn_compare`: the main job's RL branch, controllers on one game.
"""
