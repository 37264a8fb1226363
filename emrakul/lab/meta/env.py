"""Pruning as an environment: ``SurgeryEnv`` (gymnax-style ``reset`` / ``step``).

One environment step applies the agent's action (:mod:`emrakul.controllers.magistrate`:
budgets, temperature, regrowth and per-region decisions as corrections to GMP), runs one surgery
interval of K host training steps through the compiled loop (:mod:`emrakul.lab.loop`, the same
``emrakul.wrap`` mechanism as every other controller), and returns the trauma-aware reward
(:mod:`emrakul.lab.meta.reward`). One episode is one whole host training run; at its end the
state auto-resets (gymnax semantics: the returned observation is the new episode's first).
Everything is pure and vmaps over a population of hosts (seeds); hosts of different sizes share
one compiled policy through padding (``r_max``, ``l_max``).

Measured spike: ``loss_before`` is the validation loss at the end of the previous interval,
``loss_after_cut`` the validation loss right after the surgery's step, ``loss_end`` at the end
of the interval (the same estimator, on the fixed validation split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emrakul import vitals as vit
from emrakul import wrapper as wrap_mod
from emrakul._tree import default_filter
from emrakul.agent import features
from emrakul.agent.spaces import AgentAction, AgentObs
from emrakul.controllers.magistrate_v0 import ActionState, action_controller
from emrakul.lab import hosts
from emrakul.lab.loop import RunState, make_train
from emrakul.lab.meta import reward as rw
from emrakul.masks.structures import Units
from emrakul.surgery.lifecycle import ALIVE
from emrakul.vitals import regions as rg


def host_layout(config: ml_collections.ConfigDict) -> rg.RegionLayout:
    """The ``Units`` region layout of the pruned kernels of ``config``'s host."""
    module = hosts.make_host(config.host.kind, tuple(config.host.width))
    shapes = jax.eval_shape(
        lambda k: module.init(k, jnp.zeros((1, hosts.SIGNAL_LENGTH))), jax.random.PRNGKey(0)
    )["params"]
    return rg.layout(shapes, Units(-1), filter=default_filter)


class EnvState(NamedTuple):
    """The environment's state (one host)."""

    run: RunState
    prev_val_loss: jax.Array
    prev_val_accuracy: jax.Array
    prev_sparsity: jax.Array
    prev_reversals: jax.Array
    episode_return: jax.Array


class SurgeryEnv:
    """A host network's training run as an RL environment for the Magistrate.

    Args:
      config: an experiment config (``experiments/configs/default.py``); its host, data,
        training and pruning fields define the patient.
      r_max: padded region count of observations and actions (default: the host's own).
      l_max: padded layer count (default: the host's own).
      reward_config: the reward's coefficients.
      start, end: the GMP schedule the actions correct.
      drop_features: observation groups hidden from the agent (ablations; see
        :data:`emrakul.agent.features.SIGNALS`).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        r_max: int | None = None,
        l_max: int | None = None,
        reward_config: rw.RewardConfig | None = None,
        start: float = 0.2,
        end: float = 0.8,
        drop_features: tuple[str, ...] = (),
    ):
        self.layout = host_layout(config)
        self.r_max = r_max or self.layout.num_regions
        self.l_max = l_max or self.layout.num_layers
        self.config = config
        self.drop_features = tuple(drop_features)
        self.reward_config = reward_config or rw.RewardConfig()
        self.controller = action_controller(
            self.layout, self.r_max, self.l_max, start=start, end=end
        )
        self.trainer = make_train(config, self.controller)
        self.num_steps = self.trainer.num_intervals
        self.layer_size = tuple(
            int(np.prod(self.layout.leaf_shapes[i])) for i in self.layout.observed
        )
        self.num_weights = sum(self.layer_size)

    # -- observation ------------------------------------------------------------------------

    def observe(self, run: RunState, val_accuracy: jax.Array) -> AgentObs:
        """The agent's observation of the host in ``run`` (``val_accuracy``: its current
        validation accuracy), the same one a deployed policy gets from the training loop."""
        obs = wrap_mod.state_observation(
            run.params,
            run.opt_state,
            total_steps=self.num_steps * self.trainer.steps_per_interval,
            health=run.opt_state.health._replace(val_accuracy=val_accuracy),
            activations=self.trainer.activations(run),
        )
        return features.observe(obs, self.layout, self.r_max, self.l_max, self.drop_features)

    # -- gymnax API ---------------------------------------------------------------------------

    def reset(self, key: jax.Array, params: Any = None) -> tuple[AgentObs, EnvState]:
        """A fresh host (initialised from ``key``) and its first observation."""
        del params
        run = self.trainer.init(key)
        val = self.trainer.evaluate(run, "val")
        zero = jnp.float32(0.0)
        state = EnvState(run, val["loss"], val["accuracy"], zero, jnp.int32(0), zero)
        return self.observe(run, val["accuracy"]), state

    def step(
        self, key: jax.Array, state: EnvState, action: AgentAction, params: Any = None
    ) -> tuple[AgentObs, EnvState, jax.Array, jax.Array, dict[str, Any]]:
        """Applies ``action``, trains one interval, and scores it (auto-resets at the end)."""
        del params
        opt = state.run.opt_state._replace(controller=ActionState(action))
        run, m = self.trainer.interval(state.run._replace(opt_state=opt))
        done = run.interval >= self.num_steps
        reversals = jnp.sum(m.reversals)
        alive = jax.tree.map(lambda s: s == ALIVE, run.opt_state.life.state)
        summary = rw.IntervalSummary(
            val_accuracy_before=state.prev_val_accuracy,
            val_accuracy_after=m.val_accuracy,
            loss_before=state.prev_val_loss,
            loss_after_cut=m.val_loss_after_cut,
            loss_end=m.val_loss,
            param_fraction=1.0 - m.sparsity,
            flops_fraction=1.0 - m.sparsity,
            flip_flops=(reversals - state.prev_reversals).astype(jnp.float32) / self.num_weights,
            gsnr_health=rw.gsnr_health(vit.gsnr(run.opt_state.vitals), alive),
            cut_fraction=jnp.mean(m.cut),
            sparsity_before=state.prev_sparsity,
            sparsity=m.sparsity,
            target_sparsity=jnp.float32(self.config.prune.sparsity),
        )
        total, terms = rw.reward(summary, self.reward_config, done)
        continued = EnvState(
            run, m.val_loss, m.val_accuracy, m.sparsity, reversals, state.episode_return + total
        )
        reset_obs, reset_state = self.reset(key)
        next_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), reset_state, continued)
        obs = jax.tree.map(
            lambda a, b: jnp.where(done, a, b), reset_obs, self.observe(run, m.val_accuracy)
        )
        info = {
            "terms": terms,
            "test_accuracy": jnp.where(done, self.trainer.evaluate(run, "test")["accuracy"], 0.0),
            "episode_return": state.episode_return + total,
            "sparsity": m.sparsity,
            "val_accuracy": m.val_accuracy,
        }
        return obs, next_state, total, done, info


def population(configs: Sequence[Any], **kwargs: Any) -> tuple[Any, ...]:
    """Host groups of different widths and depths that one policy can act on together.

    Every group gets the largest region count and layer count of the population as its padding
    (``r_max``, ``l_max``), so that all observations share one shape; each group keeps its own
    compiled host program (a population vmaps over seeds within a group, and the meta-training
    loop runs the groups side by side in one compiled step).

    Args:
      configs: one experiment config per group (classifier hosts, :class:`SurgeryEnv`), or one
        :class:`emrakul.lab.hosts.dqn.DQNConfig` per group (RL hosts,
        :class:`emrakul.lab.meta.rl_env.DQNSurgeryEnv`); not a mixture. They must give the same
        number
        of surgery intervals, the episode length.
      **kwargs: forwarded to the environment (``reward_config``, ``drop_features``, and
        ``start`` / ``end`` for classifier hosts or ``return_scale`` / ``probe_size`` for RL
        hosts).

    Raises:
      ValueError: no configs, a mixture of classifier and DQN configs, different episode
        lengths, or an ``r_max`` / ``l_max`` keyword.
    """
    if not configs:
        raise ValueError("population needs at least one host config")
    if "r_max" in kwargs or "l_max" in kwargs:
        raise ValueError("population sets r_max and l_max itself")
    from emrakul.lab.hosts.dqn import DQNConfig

    rl = [isinstance(c, DQNConfig) for c in configs]
    if any(rl):
        if not all(rl):
            raise ValueError("population mixes DQN and classifier host configs")
        from emrakul.lab.hosts.dqn import count_intervals
        from emrakul.lab.meta.rl_env import DQNSurgeryEnv, dqn_layout

        env_cls, layout_of, length_of, unit = (
            DQNSurgeryEnv,
            dqn_layout,
            count_intervals,
            "surgery intervals",
        )
    else:
        env_cls, layout_of, unit = SurgeryEnv, host_layout, "train.steps // prune.every"

        def length_of(c):
            return int(c.train.steps) // int(c.prune.every)

    lengths = {length_of(c) for c in configs}
    if len(lengths) != 1:
        raise ValueError(
            f"host groups must have the same episode length ({unit}), got {sorted(lengths)}"
        )
    layouts = [layout_of(c) for c in configs]
    r_max = max(lay.num_regions for lay in layouts)
    l_max = max(lay.num_layers for lay in layouts)
    return tuple(env_cls(c, r_max=r_max, l_max=l_max, **kwargs) for c in configs)
