"""The lab: hosts, drivers, meta-training and reports (the ``[lab]`` extra).

Nothing in the core (:mod:`emrakul`) imports this package. It holds what our experiments run on:

* :mod:`~emrakul.lab.hosts`: the networks that are trained and pruned (classifiers on MNIST-1D,
  DQN and PPO on gymnax) and their data; each host's factory returns a
  :class:`~emrakul.lab.program.Program` (init, run a chunk of surgery intervals, metrics);
* :mod:`~emrakul.lab.build`: the controller and the wrapped optimizer built from a config, in
  one place for every host;
* :mod:`~emrakul.lab.driver`: one chunked, checkpointed, shardable driver for any program, with
  progress and exact resumption; :mod:`~emrakul.lab.runner` (classifier runs) and
  :mod:`~emrakul.lab.rl_cell` (one RL cell) are its entry points;
* :mod:`~emrakul.lab.grid`: one resumable grid of cells over a shared results file;
  :mod:`~emrakul.lab.sweeps`: the MinAtar and classifier sweeps on it;
* :mod:`~emrakul.lab.report` (rliable: IQM, stratified-bootstrap intervals, performance
  profiles; tables and plots) and :mod:`~emrakul.lab.stats` (mean and Student-t interval);
* :mod:`~emrakul.lab.meta`: meta-training of the learned controller on surgery plans (evolution
  strategies and PPO over populations of hosts; the open-loop plan search).
"""
