"""Pruning an RL host as an environment: ``DQNSurgeryEnv`` (gymnax-style ``reset`` / ``step``).

The RL-host counterpart of :class:`emrakul.lab.meta.env.SurgeryEnv`: the patient is a DQN
(:mod:`emrakul.lab.hosts.dqn`, e.g. on CartPole or a MinAtar game) instead of a classifier. One
environment step writes the agent's action into the host's controller state
(:func:`emrakul.controllers.magistrate.action_controller`, the same corrections to GMP as for the
classifier hosts), runs one surgery interval of ``prune_every`` DQN updates (acting, replay and
learning included: ``DQN.run(state, 1)``) and returns the trauma-aware reward of
:mod:`emrakul.lab.meta.reward`. One episode is one whole DQN training run; at its end the state
auto-resets. Everything is pure and vmaps over a population of hosts, and hosts of different
sizes share one compiled policy through padding (``r_max``, ``l_max``), as in
:func:`emrakul.lab.meta.env.population` (which builds these environments from ``DQNConfig``
entries).

Unlike :class:`~emrakul.lab.meta.env.SurgeryEnv`, ``step`` does **not** auto-reset (``auto_reset =
False``): a fresh DQN fills a replay buffer by random acting, and under ``vmap`` an in-step reset
would be computed (and a whole buffer selected) at every step. Call ``reset`` after ``done``;
:func:`emrakul.lab.meta.train.make_agent_train` does, once per episode, for such environments.

What stands in for the classifier's measurements:

* **accuracy** is the *score*: the mean return of the training episodes that ended during the
  interval divided by ``return_scale`` (the previous score is kept when no episode ended), so the
  accuracy and terminal terms of the reward pay for the host's return;
* **the three losses of the spike** are one estimator, the TD loss of a fixed-size batch of
  replayed transitions with the masked online network as its own target
  (``DQN.probe_loss``): ``loss_before`` and ``loss_after_cut`` are measured on the same batch
  right before and right after the surgery update (``make_dqn(..., probe_cut=P)``), ``loss_end``
  on a fresh batch at the end of the interval. The DQN's own minibatch losses are not used:
  with a target network they jump at every target copy, cut or no cut.

The observation is built exactly as a deployed Magistrate builds it inside the DQN
(:func:`emrakul.controllers.magistrate.deployed`; no activation statistics, the health tracker
fed with the TD loss), so a policy trained here runs unchanged in ``experiments.minatar_sweep``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emrakul import vitals as vit
from emrakul import wrapper as wrap_mod
from emrakul._tree import default_filter
from emrakul.agent import features
from emrakul.agent.spaces import AgentAction, AgentObs
from emrakul.controllers.magistrate_v0 import ActionState, action_controller
from emrakul.lab.hosts import dqn as dqn_mod
from emrakul.lab.meta import reward as rw
from emrakul.masks.structures import Units
from emrakul.surgery.lifecycle import ALIVE
from emrakul.vitals import regions as rg

#: Return scales of the games (a good score's order of magnitude; the score is return / scale).
RETURN_SCALES = {
    "CartPole-v1": 500.0,
    "Breakout-MinAtar": 30.0,
    "SpaceInvaders-MinAtar": 150.0,
    "Freeway-MinAtar": 60.0,
    "Asterix-MinAtar": 30.0,
}


def dqn_layout(config: dqn_mod.DQNConfig) -> rg.RegionLayout:
    """The ``Units`` region layout of the pruned kernels of ``config``'s Q-network."""
    import gymnax

    env, env_params = gymnax.make(config.env_name)
    network = dqn_mod.make_network(config, int(env.action_space(env_params).n))
    obs_shape = tuple(env.observation_space(env_params).shape)
    if not dqn_mod.is_minatar(config.env_name):
        obs_shape = (int(np.prod(obs_shape)),)
    shapes = jax.eval_shape(
        lambda k: network.init(k, jnp.zeros((1, *obs_shape), jnp.float32)),
        jax.random.PRNGKey(0),
    )["params"]
    return rg.layout(shapes, Units(-1), filter=default_filter)


class DQNEnvState(NamedTuple):
    """The environment's state (one host)."""

    host: dqn_mod.DQNState
    prev_loss: jax.Array
    prev_score: jax.Array
    prev_sparsity: jax.Array
    prev_reversals: jax.Array
    episode_return: jax.Array


class DQNSurgeryEnv:
    """A DQN's training run as an RL environment for the Magistrate.

    Args:
      config: the host's :class:`~emrakul.lab.hosts.dqn.DQNConfig` (its ``sparsity`` is the
        episode's target, ``prune_start`` / ``prune_end`` the GMP schedule the actions correct,
        ``prune_every`` the updates per decision; ``controller`` is ignored).
      r_max: padded region count of observations and actions (default: the host's own).
      l_max: padded layer count (default: the host's own).
      reward_config: the reward's coefficients.
      return_scale: the return that counts as score 1 (default: :data:`RETURN_SCALES`).
      probe_size: replayed transitions in each probe loss.
      drop_features: observation groups hidden from the agent (ablations).

    Attributes:
      auto_reset: ``False``: ``step`` does not reset at the end of an episode.

    Raises:
      ValueError: an invalid DQN config, an unknown game without ``return_scale``, or a
        non-positive ``return_scale`` / ``probe_size``.
    """

    auto_reset = False

    def __init__(
        self,
        config: dqn_mod.DQNConfig,
        r_max: int | None = None,
        l_max: int | None = None,
        reward_config: rw.RewardConfig | None = None,
        return_scale: float | None = None,
        probe_size: int = 256,
        drop_features: tuple[str, ...] = (),
    ):
        dqn_mod.validate(config)
        if return_scale is None:
            if config.env_name not in RETURN_SCALES:
                raise ValueError(
                    f"no default return_scale for {config.env_name!r}; pass return_scale "
                    f"(known: {sorted(RETURN_SCALES)})"
                )
            return_scale = RETURN_SCALES[config.env_name]
        if not return_scale > 0:
            raise ValueError(f"return_scale must be > 0, got {return_scale}")
        if probe_size < 1:
            raise ValueError(f"probe_size must be >= 1, got {probe_size}")
        self.config = config
        self.layout = dqn_layout(config)
        self.r_max = r_max or self.layout.num_regions
        self.l_max = l_max or self.layout.num_layers
        self.reward_config = reward_config or rw.RewardConfig()
        self.return_scale = float(return_scale)
        self.probe_size = int(probe_size)
        self.drop_features = tuple(drop_features)
        self.controller = action_controller(
            self.layout, self.r_max, self.l_max, start=config.prune_start, end=config.prune_end
        )
        self.dqn = dqn_mod.make_dqn(config, self.controller, probe_cut=self.probe_size)
        self.num_steps = self.dqn.num_intervals
        self.layer_size = tuple(
            int(np.prod(self.layout.leaf_shapes[i])) for i in self.layout.observed
        )
        self.num_weights = sum(self.layer_size)

    # -- measurements ----------------------------------------------------------------------------

    def observe(self, host: dqn_mod.DQNState) -> AgentObs:
        """The agent's observation of ``host``: the one a deployed Magistrate gets in the DQN."""
        obs = wrap_mod.state_observation(
            host.params, host.opt_state, total_steps=self.num_steps * self.dqn.updates_per_interval
        )
        return features.observe(obs, self.layout, self.r_max, self.l_max, self.drop_features)

    def probe(self, host: dqn_mod.DQNState) -> jax.Array:
        """The probe TD loss of ``host``'s masked online network (a batch keyed off its key)."""
        weights = wrap_mod.masked(host.params, host.opt_state)
        key = jax.random.fold_in(host.key, 0xE7D)
        return self.dqn.probe_loss(weights, host.buffer, key, self.probe_size)

    # -- gymnax API ------------------------------------------------------------------------------

    def reset(self, key: jax.Array, params: Any = None) -> tuple[AgentObs, DQNEnvState]:
        """A fresh host (initialised from ``key``, its buffer filled by random acting) and its
        first observation."""
        del params
        host = self.dqn.init(key)
        zero = jnp.float32(0.0)
        state = DQNEnvState(host, self.probe(host), zero, zero, jnp.int32(0), zero)
        return self.observe(host), state

    def step(
        self, key: jax.Array, state: DQNEnvState, action: AgentAction, params: Any = None
    ) -> tuple[AgentObs, DQNEnvState, jax.Array, jax.Array, dict[str, Any]]:
        """Applies ``action``, runs one interval of DQN updates, and scores it.

        Returns ``(obs, state, reward, done, info)``; after ``done`` the state is the finished
        host's (call :meth:`reset` for the next episode). ``info``: the reward's ``terms``, the
        episode's running ``episode_return``, the host's ``sparsity`` and ``score``, and at the
        last step ``final_score`` / ``final_return`` (0 before it).
        """
        del params, key
        host = state.host
        host = host._replace(opt_state=host.opt_state._replace(controller=ActionState(action)))
        host, rows = self.dqn.run(host, 1)
        m = jax.tree.map(lambda x: x[0], rows)
        done = host.updates >= self.num_steps * self.dqn.updates_per_interval
        opt = host.opt_state
        reversals = jnp.sum(opt.life.reversals)
        alive = jax.tree.map(lambda s: s == ALIVE, opt.life.state)
        score = jnp.where(m.episodes > 0, m.mean_return / self.return_scale, state.prev_score)
        loss_end = self.probe(host)
        summary = rw.IntervalSummary(
            val_accuracy_before=state.prev_score,
            val_accuracy_after=score,
            loss_before=m.cut_loss_before,
            loss_after_cut=m.cut_loss_after,
            loss_end=loss_end,
            param_fraction=1.0 - m.sparsity,
            flops_fraction=1.0 - m.sparsity,
            flip_flops=(reversals - state.prev_reversals).astype(jnp.float32) / self.num_weights,
            gsnr_health=rw.gsnr_health(vit.gsnr(opt.vitals), alive),
            cut_fraction=jnp.mean(opt.last_cut),
            sparsity_before=state.prev_sparsity,
            sparsity=m.sparsity,
            target_sparsity=jnp.float32(self.config.sparsity),
        )
        total, terms = rw.reward(summary, self.reward_config, done)
        next_state = DQNEnvState(
            host, loss_end, score, m.sparsity, reversals, state.episode_return + total
        )
        info = {
            "terms": terms,
            "final_score": jnp.where(done, score, 0.0),
            "final_return": jnp.where(done, score * self.return_scale, 0.0),
            "episode_return": state.episode_return + total,
            "sparsity": m.sparsity,
            "score": score,
        }
        return self.observe(host), next_state, total, done, info
