"""Meta-trains the Magistrate with PPO on a population of MNIST-1D hosts.

    python -m experiments.train_agent --workdir /tmp/agent [--iterations 30] [--hosts 8]

Every iteration rolls the vmapped host population through one whole training run (one episode:
every surgery interval is one decision), then updates the agent with PPO. Writes
``agent_metrics.jsonl`` (one row per iteration: mean episode return, final test accuracy and
sparsity of the population, PPO statistics), ``episode_return.png``, and the agent's parameters
as an orbax checkpoint under ``agent/``. The whole training state (agent, optimizer, host
population, RNG) is checkpointed under ``state/`` every ``--checkpoint_every`` iterations, and a
re-run with the same workdir resumes from it (``--noresume`` starts afresh). The host
population uses the experiment config's host, data, training and pruning fields (override with
``--config.FIELD=VALUE``).

With ``--config.population="64,64;32,32,32;128"`` the population mixes host widths and depths
(one group per entry, ``--hosts`` seeds each; :func:`emrakul.lab.meta.env.population` pads them to
one
observation shape); the per-group final test accuracy is logged as ``test_accuracy/G``.

With ``--config experiments/configs/agent_rl.py`` the hosts are RL agents instead: CartPole DQNs
(:class:`emrakul.lab.meta.rl_env.DQNSurgeryEnv`; ``--config.population`` lists MLP widths), and the
logged final score is the hosts' final training return (``final_return``; ``final_score`` is it
divided by the game's return scale). Deploy such a policy in the MinAtar sweep as an extra arm:
``--config.arms=magistrate_rl --config.magistrate.policies=rl=WORKDIR/agent``.

Evaluate the frozen policy with ``python -m experiments.train --config
experiments/configs/agent.py --config.compare=dense,gmp,rigl,magistrate
--config.controllers.magistrate.policy=WORKDIR/agent --config.seed_offset=1000``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab.checkpoint import Checkpointer
from emrakul.lab.meta.env import SurgeryEnv, population
from emrakul.lab.meta.train import PPOConfig, make_agent_train
from experiments import rl_population

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "agent.py"), "Host config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_ITERATIONS = flags.DEFINE_integer("iterations", 30, "PPO iterations (one episode each).")
_HOSTS = flags.DEFINE_integer("hosts", 8, "Hosts in the population (vmapped).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_CKPT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 1, "Checkpoint the training state every N iterations (0: never)."
)
_RESUME = flags.DEFINE_bool("resume", True, "Resume from WORKDIR/state if it holds a checkpoint.")
_DROP = flags.DEFINE_list(
    "drop_features", [], "Observation groups hidden from the agent (ablation), e.g. gsnr,flip."
)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    config = _CONFIG.value
    drop = tuple(_DROP.value)
    groups = [g for g in str(config.get("population", "")).split(";") if g.strip()]
    if "rl" in config:  # RL hosts: DQNs
        envs = rl_population.build(config, drop)
        print(
            f"RL hosts ({config.rl.env_name} DQN): {len(envs)} groups x {_HOSTS.value} hosts, "
            f"{envs[0].num_steps} decisions per episode, widths "
            f"{[e.config.mlp_hidden for e in envs]}"
        )
    elif groups:
        configs = []
        for g in groups:
            c = config.copy_and_resolve_references()
            c.host.width = tuple(int(w) for w in g.split(",") if w.strip())
            configs.append(c)
        envs = population(configs, drop_features=drop)
        print(f"population: {len(envs)} groups x {_HOSTS.value} hosts, widths {groups}")
    else:
        envs = SurgeryEnv(config, drop_features=drop)
    cfg = PPOConfig(num_hosts=_HOSTS.value)
    trainer = make_agent_train(envs, cfg)
    init = jax.jit(trainer.init)
    update = jax.jit(trainer.update)
    key = jax.random.PRNGKey(_SEED.value)
    metrics_path = os.path.join(workdir, "agent_metrics.jsonl")
    ckpt = Checkpointer(os.path.join(workdir, "state"), max_to_keep=2)
    done, rows, state = 0, [], None
    if _RESUME.value and (restored := ckpt.restore_latest(jax.eval_shape(init, key))):
        done, state = restored
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                rows = [r for r in map(json.loads, f) if r["iteration"] < done]
        print(f"resuming after iteration {done - 1} ({ckpt.directory})")
    if state is None:
        state = init(key)
    with open(metrics_path, "w") as f:  # rewritten: rows past the checkpoint are dropped
        f.writelines(json.dumps(r) + "\n" for r in rows)
    start = time.time()
    for i in range(done, _ITERATIONS.value):
        state, m = update(state)
        row = {"iteration": i, **{k: float(v) for k, v in m.items()}}
        rows.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if _CKPT_EVERY.value and ((i + 1) % _CKPT_EVERY.value == 0 or i + 1 == _ITERATIONS.value):
            ckpt.save(i + 1, state)
        score = (
            f"test acc {row['test_accuracy']:.4f}"
            if "test_accuracy" in row
            else f"host return {row['final_return']:.1f}"
        )
        print(
            f"iter {i:3d}  return {row['episode_return']:+.4f}  {score}  sparsity "
            f"{row['final_sparsity']:.4f}  kl {row['approx_kl']:.4f}  ({time.time() - start:.0f}s)",
            flush=True,
        )
    saver = ocp.StandardCheckpointer()
    saver.save(os.path.abspath(os.path.join(workdir, "agent")), state.params, force=True)
    saver.wait_until_finished()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["iteration"] for r in rows], [r["episode_return"] for r in rows])
    ax.set_xlabel("PPO iteration (one episode per host)")
    ax.set_ylabel(f"mean episode return ({_HOSTS.value} hosts)")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "episode_return.png"), dpi=100)
    print(f"wrote {workdir}/agent_metrics.jsonl, episode_return.png, agent/")


if __name__ == "__main__":
    app.run(main)
