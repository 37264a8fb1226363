"""The RL-host population of an ``experiments/configs/agent_rl.py``-style config.

Shared by ``experiments.train_agent`` (meta-training) and ``experiments.eval_rl_env`` (scoring
policies in the same environment), so both build exactly the same hosts.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from emrakul.lab.hosts.dqn import DQNConfig
from emrakul.lab.meta.env import population
from emrakul.lab.meta.rl_env import DQNSurgeryEnv


def build(
    config: ml_collections.ConfigDict, drop_features: Sequence[str] = ()
) -> list[DQNSurgeryEnv]:
    """One :class:`~emrakul.lab.meta.rl_env.DQNSurgeryEnv` group per ``config.population`` entry.

    Args:
      config: with ``rl`` (the ``DQNConfig`` fields), ``population`` (``;``-separated MLP
        widths, e.g. ``"64,64;128,128"``; empty: one group of ``rl.mlp_hidden``),
        ``return_scale`` (0: the game's default) and ``probe_size``.
      drop_features: observation groups hidden from the agent (ablations).
    """
    base = DQNConfig(**{**config.rl.to_dict(), "mlp_hidden": tuple(config.rl.mlp_hidden)})
    groups = [g for g in str(config.get("population", "")).split(";") if g.strip()]
    widths = [tuple(int(w) for w in g.split(",") if w.strip()) for g in groups]
    kwargs = {"drop_features": tuple(drop_features), "probe_size": int(config.probe_size)}
    if config.return_scale:
        kwargs["return_scale"] = float(config.return_scale)
    return population([base._replace(mlp_hidden=w) for w in widths] or [base], **kwargs)
