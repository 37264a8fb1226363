"""The lab: hosts, drivers, meta-training and reports (the ``[lab]`` extra).

Nothing in the core (:mod:`emrakul`) imports this package. It holds what our experiments run on:

* :mod:`~emrakul.lab.hosts`: the networks that are trained and pruned (classifiers on MNIST-1D,
  DQN and PPO on gymnax) and their data;
* :mod:`~emrakul.lab.loop` and :mod:`~emrakul.lab.runner`: the compiled classifier program and
  the chunked, checkpointed, shardable driver;
* :mod:`~emrakul.lab.meta`: meta-training of the learned controller (surgery environments, the
  trauma-aware reward, PPO);
* :mod:`~emrakul.lab.stats`: intervals and aggregate statistics for reports.
"""
