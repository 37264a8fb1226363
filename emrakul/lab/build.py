"""What every host builds the same way: its controller from a name, its wrapped Adam.

Every host prunes through :func:`emrakul.wrap` around Adam (Kingma & Ba 2015, "Adam: A Method
for Stochastic Optimization"), the dense baseline included, so dense and pruned runs execute
one program. A controller is named as in configs and tables (:data:`emrakul.controllers.NAMES`)
with keyword arguments per name, or given as a :class:`~emrakul.controllers.Controller` (e.g.
the deployed learned controller).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
import optax

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod
from emrakul.controllers.with_remedy import split_name, with_remedy
from emrakul.lab import hosts
from emrakul.wrapper.settings import VITALS_EVERY

ControllerKwargs = Mapping[str, Mapping[str, Any]]


def make_controller(
    controller: str | ctl.Controller, kwargs_by_name: ControllerKwargs | None = None
) -> ctl.Controller:
    """The controller ``controller`` names, built with ``kwargs_by_name[controller]``.

    Args:
      controller: a name in :data:`emrakul.controllers.NAMES`, or a controller object (returned
        as it is).
      kwargs_by_name: keyword arguments per controller name (a name without an entry is built
        with its defaults).

    Returns:
      The :class:`~emrakul.controllers.Controller`.

    Raises:
      ValueError: an unknown controller name.
    """
    if isinstance(controller, ctl.Controller):
        return controller
    if not isinstance(controller, str):
        raise ValueError(f"controller must be a name or a Controller, got {controller!r}")
    kwargs = kwargs_by_name or {}
    parts = split_name(controller)
    if parts is not None:  # "pruner+remedy": each part with its own keyword arguments
        pruner, remedy = (ctl.make(p, **dict(kwargs.get(p, {}))) for p in parts)
        return with_remedy(pruner, remedy)
    return ctl.make(controller, **dict(kwargs.get(controller, {})))


def schedule_kwargs(start: float, end: float) -> dict[str, dict[str, float]]:
    """Per-controller keyword arguments of a host config's pruning schedule: gradual magnitude
    pruning (Zhu & Gupta 2017, "To prune, or not to prune") runs from ``start`` to ``end``
    (fractions of training); the other controllers keep their own schedules."""
    return {"gmp": {"start": start, "end": end}}


def wrapped_adam(
    controller: ctl.Controller,
    *,
    lr: float,
    eps: float = 1e-8,
    max_grad_norm: float | None = None,
    **wrap_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """``emrakul.wrap(optax.adam(lr, eps=eps), controller, **wrap_kwargs)``.

    Args:
      controller: the controller.
      lr: Adam's learning rate.
      eps: Adam's epsilon (optax's default ``1e-8``).
      max_grad_norm: when given, gradients are clipped to this global norm before Adam
        (``optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)``).
      **wrap_kwargs: :func:`emrakul.wrap`'s settings (``total_steps``, ``sparsity``, ...).

    Returns:
      The wrapped optimizer.

    Raises:
      ValueError: a non-positive ``lr``, ``eps`` or ``max_grad_norm``.
    """
    for name, value in (("lr", lr), ("eps", eps), ("max_grad_norm", max_grad_norm)):
        if value is not None and not float(value) > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    inner = optax.adam(lr, eps=eps)
    if max_grad_norm is not None:
        inner = optax.chain(optax.clip_by_global_norm(max_grad_norm), inner)
    return wrap_mod.wrap(inner, controller, **wrap_kwargs)


def classifier_data(config: ml_collections.ConfigDict) -> hosts.Dataset:
    """The MNIST-1D splits of a classifier config's ``data`` fields."""
    d = config.data
    return hosts.load_mnist1d(seed=d.seed, num_samples=d.num_samples, val_fraction=d.val,
                              extra_val=int(d.get("extra_val", 0)),
                              extra_test=int(d.get("extra_test", 0)))  # fmt: skip


def monitor_split(config: ml_collections.ConfigDict, data: hosts.Dataset) -> hosts.Split | None:
    """The first ``data.monitor`` validation examples (``None``: the whole split)."""
    n = int(config.data.get("monitor", 0))
    if 0 < n < data.val.y.shape[0]:
        return hosts.Split(data.val.x[:n], data.val.y[:n])
    return None


def config_adam(
    config: ml_collections.ConfigDict,
    controller: ctl.Controller,
    total_steps: int,
    structure,
    filter_fn=None,
) -> optax.GradientTransformationExtraArgs:
    """:func:`wrapped_adam` with a classifier config's ``train.lr`` and ``prune`` fields
    (``filter_fn``: ``wrap``'s ``filter``, the pruned leaves)."""
    p = config.prune
    return wrapped_adam(
        controller, filter=filter_fn, lr=config.train.lr, total_steps=total_steps,
        sparsity=p.sparsity, distribution=p.distribution, structure=structure,
        every=int(p.every), cooldown=p.cooldown, anesthesia_threshold=p.anesthesia.threshold,
        anesthesia_depth=p.anesthesia.depth, anesthesia_recovery=p.anesthesia.recovery,
        vitals_decay=p.vitals_decay, vitals_every=int(p.get("vitals_every", VITALS_EVERY)),
        compact_vitals=bool(p.get("compact_vitals", False)),
    )  # fmt: skip
