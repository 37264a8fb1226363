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

import optax

from emrakul import controllers as ctl
from emrakul import wrapper as wrap_mod

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
    return ctl.make(controller, **dict((kwargs_by_name or {}).get(controller, {})))


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
