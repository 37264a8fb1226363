"""A pruning controller and a plasticity remedy together: a sparse network that stays plastic.

``with_remedy(pruner, remedy)`` decides the masks as ``pruner`` does and rewrites weights as
``remedy`` does (continual backprop's unit re-initialisation, Shrink & Perturb, ...), from the
same observation at every surgery: the remedy's :class:`~emrakul.surgery.rewrite.Rewrite` rides
on the pruner's decision, after the mask changes, and lysed weights stay zero. The lab names it
``"pruner+remedy"`` (``"breathing+continual_backprop"``; :func:`split_name`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from emrakul.controllers.base import Controller, Observation

SEPARATOR = "+"


class WithRemedyState(NamedTuple):
    """The pruner's state and the remedy's."""

    pruner: Any
    remedy: Any


def split_name(name: str) -> tuple[str, str] | None:
    """``"pruner+remedy"`` -> ``("pruner", "remedy")``; a plain name -> ``None``.

    Raises:
      ValueError: more than one ``+`` or an empty part.
    """
    if SEPARATOR not in name:
        return None
    parts = [p.strip() for p in name.split(SEPARATOR)]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a combined controller is named 'pruner+remedy', got {name!r}")
    return parts[0], parts[1]


def with_remedy(pruner: Controller, remedy: Controller) -> Controller:
    """``pruner``'s masks with ``remedy``'s weight rewrites (module docstring).

    Raises:
      ValueError: a remedy with gates (a remedy is a dense controller that rewrites weights).
    """
    if remedy.gates is not None or remedy.learn is not None:
        raise ValueError(f"'{remedy.name}' has gates; a remedy must be a dense controller")

    def init(params: Any, observation: Observation | None = None, key=None) -> WithRemedyState:
        return WithRemedyState(pruner.init(params, observation, key),
                               remedy.init(params, observation, key))  # fmt: skip

    def decide(obs: Observation, state: WithRemedyState):
        decision, p_state = pruner.decide(obs, state.pruner)
        if getattr(decision, "rewrite", None) is not None:
            raise ValueError(
                f"'{pruner.name}' rewrites weights itself; combine a pruning controller with "
                "one remedy"
            )
        fix, r_state = remedy.decide(obs, state.remedy)
        return decision._replace(rewrite=fix.rewrite), WithRemedyState(p_state, r_state)

    return pruner._replace(
        name=f"{pruner.name}{SEPARATOR}{remedy.name}",
        init=init,
        decide=decide,
        needs_vitals=pruner.needs_vitals or remedy.needs_vitals,
        needs_activations=pruner.needs_activations or remedy.needs_activations,
    )
