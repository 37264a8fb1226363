"""Host networks that Emrakul trains and prunes, and the data they learn from.

* :mod:`emrakul.lab.hosts.mnist1d`: MNIST-1D (Greydanus 2020) generated in-process, jit-friendly
  minibatch sampling.
* :mod:`emrakul.lab.hosts.classifier`: Flax Linen MLP and 1-D CNN classifiers, a fast ``Conv1D``,
  and loss/metric helpers.

Reinforcement-learning hosts on gymnax (imported on demand, so that the classifiers do not
import gymnax): :mod:`emrakul.lab.hosts.dqn` (DQN with an in-state replay buffer,
:mod:`emrakul.lab.hosts.replay`; settings in :mod:`~emrakul.lab.hosts.dqn_config`, its steps in
:mod:`~emrakul.lab.hosts.dqn_steps`), :mod:`emrakul.lab.hosts.ppo_host` (PPO-clip; settings in
:mod:`~emrakul.lab.hosts.ppo_config`), vectorised environment steps in
:mod:`~emrakul.lab.hosts.envs`, and their networks in :mod:`emrakul.lab.hosts.rl_nets` (MinAtar's
CNN with a fast ``Conv2D``, width multiplier, global average pooling control; the actor-critics).

Every host returns a :class:`~emrakul.lab.program.Program` (``.program``), which
:mod:`emrakul.lab.driver` runs in checkpointed, shardable chunks.
"""

from emrakul.lab.hosts.classifier import (
    CNN1D,
    HOST_KINDS,
    MLP,
    Conv1D,
    accuracy,
    cross_entropy,
    evaluate,
    make_host,
    max_pool2,
)
from emrakul.lab.hosts.mnist1d import (
    NUM_CLASSES,
    SIGNAL_LENGTH,
    Dataset,
    Split,
    load_mnist1d,
    sample_batch,
)

__all__ = [
    "CNN1D",
    "HOST_KINDS",
    "MLP",
    "NUM_CLASSES",
    "SIGNAL_LENGTH",
    "Conv1D",
    "Dataset",
    "Split",
    "accuracy",
    "cross_entropy",
    "evaluate",
    "load_mnist1d",
    "make_host",
    "max_pool2",
    "sample_batch",
]
