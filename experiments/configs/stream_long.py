"""The long stream setting: 100 permuted-label tasks of 1000 steps at Adam's usual step size.

    python -m experiments.stream --workdir DIR --config experiments/configs/stream_long.py

A script-length run (hours on 2 cores, resumable like every stream run): the setting in which
the dense network loses plasticity at ``lr = 1e-3`` (``stream.py``'s default uses a larger step
size to show it within minutes). Fields as in ``experiments/configs/stream.py``.
"""

import ml_collections

from experiments.configs import stream


def get_config() -> ml_collections.ConfigDict:
    """100 tasks x 1000 steps, lr 1e-3, 8 seeds, every remedy and pruning arm."""
    c = stream.get_config()
    c.stream.num_tasks = 100
    c.stream.task_steps = 1000
    c.train.lr = 1e-3
    c.seeds = 8
    c.compare = (
        "dense,continual_backprop,redo,shrink_perturb,selective_forgetting,gmp,rigl,set,"
        "breathing,magistrate"
    )
    return c
