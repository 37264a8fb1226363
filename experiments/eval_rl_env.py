"""Scores trained Magistrate policies inside the RL-host training environment.

    python -m experiments.eval_rl_env --policies rl=/tmp/agent_rl/agent [--hosts 16] [--seed 1000]

Runs one episode (one whole CartPole DQN training run, a decision per surgery interval) of
:class:`emrakul.lab.meta.rl_env.DQNSurgeryEnv` per host, for every policy on the *same* host seeds,
and
prints the mean episode return of the agent's reward and the hosts' final return (mean ± 95%
Student-t CI over hosts, and the paired difference to the ``neutral`` policy). ``neutral`` is
always included: an agent with zero output heads, whose deterministic action is "follow the GMP
schedule" (so it scores GMP in this environment) and whose sampled actions are those of a fresh
agent in ``experiments.train_agent`` (the exploration noise PPO starts from). Each policy is
run with its deterministic action (``mode``, as deployed) and, with ``--sampled``, also with
sampled actions (as in training). The host population comes from ``--config`` (default
``experiments/configs/agent_rl.py``), as in ``experiments.train_agent``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.agent import networks as nw
from emrakul.lab.meta.train import PPOConfig
from emrakul.lab.stats import mean_ci
from experiments import rl_population

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "configs", "agent_rl.py"),
    "RL-host population config.",
)
_POLICIES = flags.DEFINE_list("policies", [], "NAME=PATH pairs of experiments.train_agent agents.")
_HOSTS = flags.DEFINE_integer("hosts", 16, "Hosts per group (the same seeds for every policy).")
_SEED = flags.DEFINE_integer("seed", 1000, "Seed of the hosts (use one not seen in training).")
_SAMPLED = flags.DEFINE_bool("sampled", False, "Also run every policy with sampled actions.")


def make_episode(env, sampled: bool):
    """``episode(params, key) -> (agent return, host final return)`` of one host."""
    agent = nw.Agent()

    def episode(params, key):
        k_reset, k_run = jax.random.split(key)
        obs, state = env.reset(k_reset)

        def step(carry, k):
            obs, state, total = carry
            policy, _ = agent.apply(params, obs)
            action = nw.sample(k, policy, obs) if sampled else nw.mode(policy, obs)
            obs, state, reward, _, info = env.step(jax.random.fold_in(k, 1), state, action, None)
            return (obs, state, total + reward), info["final_return"]

        keys = jax.random.split(k_run, env.num_steps)
        (_, _, total), final = jax.lax.scan(step, (obs, state, jnp.float32(0.0)), keys)
        return total, final[-1]

    return jax.jit(jax.vmap(episode, in_axes=(None, 0)))


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    envs = rl_population.build(_CONFIG.value)
    obs, _ = envs[0].reset(jax.random.PRNGKey(0))
    neutral = nw.Agent(keep_bias=PPOConfig().keep_bias, head_init_scale=0.0)  # training's init
    policies = {"neutral": neutral.init(jax.random.PRNGKey(0), obs)}
    for item in _POLICIES.value:
        name, sep, path = item.partition("=")
        if not sep or not os.path.isdir(path):
            raise app.UsageError(f"--policies entry {item!r} is not NAME=PATH of a directory")
        restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
        policies[name] = jax.tree.map(jnp.asarray, restored)
    modes = [False, True] if _SAMPLED.value else [False]
    results = {}
    for g, env in enumerate(envs):
        keys = jax.random.split(
            jax.random.fold_in(jax.random.PRNGKey(_SEED.value), g), _HOSTS.value
        )
        for sampled in modes:
            episode = make_episode(env, sampled)
            for name, params in policies.items():
                ret, final = jax.tree.map(np.asarray, episode(params, keys))
                results[(g, name, sampled)] = (ret, final)
                how = "sampled" if sampled else "mode"
                print(
                    f"group {g} {name} {how}: return {ret.mean():+.4f}, "
                    f"final host return {final.mean():.1f}",
                    flush=True,
                )
    print(
        "\n| group | policy | action | agent return | vs neutral | host final return | vs neutral |"
    )
    print("|---|---|---|---|---|---|---|")
    for (g, name, sampled), (ret, final) in results.items():
        base_ret, base_final = results[(g, "neutral", False)]
        cells = []
        for x, base in ((ret, base_ret), (final, base_final)):
            m, ci = mean_ci(x)
            cells.append(f"{m:.3f} ± {ci:.3f}")
            dm, dci = mean_ci(x - base)
            cells.append("-" if name == "neutral" and not sampled else f"{dm:+.3f} ± {dci:.3f}")
        widths = envs[g].config.mlp_hidden
        print(
            f"| {g} {widths} | {name} | {'sampled' if sampled else 'mode'} | {' | '.join(cells)} |"
        )


if __name__ == "__main__":
    app.run(main)
