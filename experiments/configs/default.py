"""Default experiment: MNIST-1D, an over-parameterised MLP, dense vs GMP vs RigL at 90%.

Every field, with its meaning (override any of them with ``--config.FIELD=VALUE``):

* ``controller``: the controller ``experiments.train`` uses when ``compare`` is empty.
* ``compare``: comma-separated controllers the main job runs one after another (each vmapped
  over ``seeds``).
* ``seeds``: number of seeds per controller (vmapped in one compiled program).
* ``seed_offset``: the first seed (use fresh seeds to evaluate a policy trained on others).
* ``controllers``: per-controller keyword arguments, e.g. ``controllers.rigl.alpha``;
  ``controllers.magistrate.policy`` is the policy file (``experiments.train_agent``'s
  ``WORKDIR/policy.msgpack``) that the ``magistrate`` controller deploys (empty: the policy
  shipped in the package).
* ``host.kind``: ``mlp`` or ``cnn`` (a 1-D CNN on the 40-long signal).
* ``host.width``: a tuple of hidden widths (MLP) or channel counts (CNN), e.g. ``"(512, 512)"``.
* ``data.seed``, ``data.num_samples``, ``data.val``: MNIST-1D generation seed, number of
  examples (80% train+val, 20% test, as made by the ``mnist1d`` package), validation fraction
  of the training part; ``data.extra_val`` / ``data.extra_test``: further examples appended to
  the validation / test split (same generator, a derived seed; the training split is unchanged);
  ``data.monitor``: validation examples the per-interval metrics and the controllers' observations
  use (the first ones; 0: all), the final evaluation always scores the whole split.
* ``train.steps``: host training steps (rounded down to whole surgery intervals).
* ``train.batch_size``, ``train.lr``: minibatch size and Adam learning rate.
* ``prune.sparsity``: final target sparsity of the pruned leaves (kernels), in [0, 1).
* ``prune.distribution``: ``uniform`` or ``erk`` per-layer budgets.
* ``prune.structure``: ``unstructured``, ``units`` (output units), ``nm:N:M``, or ``groups``
  (the host's dependency groups as units, :func:`emrakul.export.group_pruning`: a hidden unit
  with its bias and the next layer's rows; the output layer stays whole).
* ``prune.every``: host steps per surgery interval (mask updates, validation, metrics rows).
* ``prune.cooldown``: host steps a weight must wait after changing state (flip-flop damping).
* ``prune.vitals_decay``: EMA decay of the vital signs (kept only for controllers needing them).
* ``prune.vitals_every``: host steps between updates of the vital signs (``wrap``'s default).
* ``prune.compact_vitals``: bfloat16 EMAs and a uint8 age (``wrap``'s compact state).
* ``prune.anesthesia.threshold`` / ``.depth`` / ``.recovery``: a layer losing more than
  ``threshold`` of its alive weights in one surgery has its learning rate multiplied by
  ``depth``, recovering by ``recovery`` per step (``depth = 1`` turns anesthesia off).
* ``run.chunk``: surgery intervals per compiled chunk (progress and checkpoint granularity).
* ``run.checkpoint``: save orbax checkpoints under ``WORKDIR/checkpoints`` and resume from them.
* ``run.seed_loop``: ``"vmap"`` (seeds batched in one program) or ``"map"`` (one seed after the
  other: each seed's results equal that seed run alone, sharded or not, bit for bit on
  XLA:CPU; see :func:`emrakul.lab.sharding.over_seeds`).
* ``run.native_topk``: use the optional native CPU kernel for the exact top-k selections of the
  mask updates (:mod:`emrakul.masks.native`: same masks, faster on the CPU; it needs a C++
  compiler and is compiled on first use).
* ``lysis.every``: with ``prune.structure='groups'``, every this many chunks remove the units
  that every seed has lysed from the host, its optimizer state and Emrakul's state, and go on
  with the smaller program (issue 19; 0: never). Needs a controller that does not observe
  activation statistics, and no mesh.
* ``lysis.multiple_of``: surviving widths are multiples of this (a run recompiles a few times).
"""

import ml_collections

from emrakul.wrapper.settings import VITALS_EVERY


def get_config() -> ml_collections.ConfigDict:
    """The default experiment config."""
    c = ml_collections.ConfigDict()
    c.controller = "gmp"
    c.compare = "dense,gmp,rigl"
    c.seeds = 4
    c.seed_offset = 0
    c.controllers = ml_collections.ConfigDict({"magistrate": {"policy": ""}})
    c.host = ml_collections.ConfigDict({"kind": "mlp", "width": (256, 256)})
    c.data = ml_collections.ConfigDict(
        {"seed": 0, "num_samples": 5000, "val": 0.1, "extra_val": 0, "extra_test": 0, "monitor": 0}
    )
    c.train = ml_collections.ConfigDict({"steps": 3000, "batch_size": 128, "lr": 1e-3})
    c.prune = ml_collections.ConfigDict(
        {
            "sparsity": 0.9,
            "distribution": "uniform",
            "structure": "unstructured",
            "every": 100,
            "cooldown": 0,
            "vitals_decay": 0.99,
            "vitals_every": VITALS_EVERY,
            "compact_vitals": False,
            "anesthesia": {"threshold": 1.0, "depth": 1.0, "recovery": 0.01},
        }
    )
    c.run = ml_collections.ConfigDict(
        {"chunk": 5, "checkpoint": True, "seed_loop": "vmap", "native_topk": False}
    )
    c.lysis = ml_collections.ConfigDict({"every": 0, "multiple_of": 8})
    return c
