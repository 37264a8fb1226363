"""Named classifier hosts for evaluations and meta-training, with large validation and test splits.

A preset overrides the host, the run length and the surgery interval of
``experiments/configs/default.py``; :func:`host_config` also enlarges the validation and test
splits (:func:`emrakul.lab.hosts.load_mnist1d`'s ``extra_val`` / ``extra_test``: the training
split is unchanged) and lets the per-interval metrics and the controllers' observations read the
first :data:`MONITOR` validation examples only.
"""

from __future__ import annotations

from typing import Any

import ml_collections

#: Host presets: config overrides of ``experiments/configs/default.py``.
HOSTS: dict[str, dict[str, Any]] = {
    "meta": {"width": (64, 64), "steps": 1000, "every": 50},
    "pop_deep": {"width": (32, 32, 32), "steps": 1000, "every": 50},
    "pop_narrow": {"width": (48, 48), "steps": 1000, "every": 50},
    "pop_shallow": {"width": (128,), "steps": 1000, "every": 50},
    "default": {"width": (256, 256), "steps": 3000, "every": 100},
    "wide": {"width": (96, 96), "steps": 1000, "every": 50},
    "deep": {"width": (32, 32, 32, 32), "steps": 1000, "every": 50},
    "cnn": {"kind": "cnn", "width": (32, 32), "steps": 1000, "every": 50},
}
#: The evaluation's validation and test splits (examples added to MNIST-1D's 400 / 1000).
EXTRA_VAL, EXTRA_TEST = 2000, 4000
#: Validation examples the per-interval metrics and the controllers' observations use (the
#: original 400 of MNIST-1D's split); the final validation accuracy scores all 2,400.
MONITOR = 400


def host_config(base: ml_collections.ConfigDict, host: str) -> ml_collections.ConfigDict:
    """``base`` with the preset of ``host`` and the evaluation's larger splits.

    Raises:
      ValueError: an unknown host.
    """
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; choose from {sorted(HOSTS)}")
    preset = HOSTS[host]
    config = base.copy_and_resolve_references()
    config.host.kind = preset.get("kind", "mlp")
    config.host.width = tuple(preset["width"])
    config.train.steps = int(preset["steps"])
    config.prune.every = int(preset["every"])
    config.data.extra_val = EXTRA_VAL
    config.data.extra_test = EXTRA_TEST
    config.data.monitor = MONITOR
    return config
