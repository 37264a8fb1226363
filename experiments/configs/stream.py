"""Stream experiment: a network learns a non-stationary MNIST-1D stream while arms prune it or
keep it plastic (``python -m experiments.stream``).

Fields as in ``experiments/configs/default.py`` (``host``, ``data``, ``train``, ``prune``,
``run``, ``controllers``), and:

* ``stream.kind``: ``permuted_labels`` (labels re-mapped at every task switch),
  ``permuted_inputs`` (input positions re-permuted) or ``drift`` (a smooth shift and gain).
* ``stream.num_tasks``, ``stream.task_steps``: tasks and host steps per task (a multiple of
  ``prune.every``); ``train.steps`` is their product and is not read.
* ``stream.shift``, ``stream.gain``: the drift's largest shift (positions) and log-gain.
* ``train.lr``: 1e-2 in the default. At Adam's usual 1e-3 a dense 256-256 MLP does *not* lose
  plasticity over 30 permuted-label tasks of 200 steps (it keeps improving); a larger step size
  (as in Dohare et al. 2024, where plasticity is lost faster at larger step sizes) or tasks five
  times longer make it lose it (BUILD_NOTES.md, "Streams"). ``stream_long.py`` is the long
  setting at 1e-3.
* ``prune.vitals_every``: 1 (vital signs every step, as the stream figures of BUILD_NOTES.md and
  the stream-trained policy were measured), not ``wrap``'s default period.
* ``compare``: the arms, comma-separated controller names, each run over ``seeds`` seeds.
* ``controllers``: per-arm keyword arguments. For a stream, GMP prunes to the target over the
  first 10% of the stream and then keeps its mask (``start=0, end=0.1``); RigL and SET keep
  moving their topology to the end (``end=1``); breathing prunes over the first 10% and swaps
  until then; the learned Magistrate (``policy="stream"``: the policy shipped for streams,
  meta-trained on permuted labels with continual backprop; ``""`` is the classifier policy) is
  deployed with the same window, keeps swapping after it and never lyses, so sedated weights stay
  wakeable (``magistrate``'s schedule overrides), and runs with continual backprop in the default
  arms (``magistrate+continual_backprop``, as it was trained); the remedies
  (``continual_backprop``, ``redo``, ``shrink_perturb``, ``selective_forgetting``) run with
  their papers' defaults on the dense network.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
    """The default stream config: permuted labels, 30 tasks, five arms at 90% (the learned one:
    the shipped stream policy with continual backprop)."""
    c = default.get_config()
    c.compare = "dense,continual_backprop,gmp,rigl,magistrate+continual_backprop"
    c.seeds = 4
    c.stream = ml_collections.ConfigDict(
        {"kind": "permuted_labels", "num_tasks": 30, "task_steps": 200, "shift": 10.0, "gain": 0.7}
    )
    c.train.lr = 1e-2
    c.prune.every = 50
    c.prune.vitals_every = 1  # the stream figures and the stream-trained policy: every step
    c.prune.distribution = "erk"
    c.train.steps = c.stream.num_tasks * c.stream.task_steps
    c.controllers = ml_collections.ConfigDict(
        {
            "magistrate": {
                "policy": "stream",
                "start": 0.0,
                "end": 0.1,
                "lyse_at_end": False,
                "churn_after_end": True,
            },
            "gmp": {"start": 0.0, "end": 0.1},
            "rigl": {"end": 1.0},
            "set": {"end": 1.0},
            "breathing": {"start": 0.0, "end": 0.1},
        }
    )
    c.run.chunk = 5
    return c
