"""Meta-trains the Magistrate (the learned controller) on a population of MNIST-1D hosts.

    python -m experiments.train_agent --workdir /work/runs/agent_es [--trainer=ppo]

``--trainer=es`` (default): evolution strategies (evosax's OpenAI-ES, antithetic pairs, centred
ranks) on the plan network's parameters (:mod:`emrakul.lab.meta.es_train`): every generation trains
``--population`` policies x the host groups of ``--groups`` (hidden widths, ``;``-separated) x
``--seeds`` host seeds shared by all policies (common random numbers), all in one compiled
program, and scores each policy by the hosts' mean validation accuracy (2,400 examples) at the
end of training. The search starts at the neutral heuristic (``--base`` with the config's
distribution) and resumes from ``WORKDIR/es_state``. Writes ``es_log.jsonl``,
``fitness.png`` and ``policy.msgpack`` (every ``--save_every`` generations and at the end),
which ``--config.controllers.magistrate.policy=WORKDIR/policy.msgpack`` deploys.

``--stream`` (with ``--config=experiments/configs/stream.py``): ES on the config's
non-stationary stream instead (:mod:`emrakul.lab.meta.stream_train`): the groups are MLP widths,
the plan space is the stream's (prune early, keep swapping, never lyse) and a policy is scored
by the mean validation accuracy over the last ``--window`` tasks. ``--init`` may then be a
classifier policy (the shipped one: ``--init=shipped``): only its schedule differs;
``--remedy=continual_backprop`` runs that remedy beside the policy (deploy the result as
``magistrate+continual_backprop``).

``--trainer=ppo``: PPO with group-relative advantages (:mod:`emrakul.lab.meta.ppo_plans`) on the
same compute per iteration (``--ppo_seeds`` x ``--group_size`` host runs per group; with the
defaults 8 x 4 = the ES's 16 x 2), plans sampled around the network's output and held for
``--phases`` phases; resumes from ``WORKDIR/ppo_state``, logs ``ppo_log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.magistrate import DEPLOY_FIELDS, SHIPPED, load_policy, save_policy
from emrakul.controllers.plan_space import PlanSpace
from emrakul.lab.meta import es_search, es_train, ppo_plans, ppo_train, stream_train
from emrakul.lab.sweeps import paired

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "agent.py"), "Host config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_GROUPS = flags.DEFINE_string(
    "groups", "", "Host groups, ';'-separated: hidden widths or host presets (e.g. 'default')."
)
_INIT = flags.DEFINE_string("init", "", "Start from this policy file instead of zero heads.")
_TRAINER = flags.DEFINE_enum("trainer", "es", ["es", "ppo"], "Meta-trainer.")
_DIST = flags.DEFINE_enum("distribution", "erk", ["uniform", "erk"], "Base allocation.")
_BASE = flags.DEFINE_enum("base", "breathing", ["breathing", "gmp"], "Neutral heuristic.")
_POP = flags.DEFINE_integer("population", 16, "Policies per generation (even).")
_SEEDS = flags.DEFINE_integer("seeds", 2, "ES: host seeds per policy, group and generation.")
_PPO_SEEDS = flags.DEFINE_integer("ppo_seeds", 8, "PPO: host seeds per group and iteration.")
_GROUP = flags.DEFINE_integer("group_size", 4, "PPO: plan samples per host seed.")
_PHASES = flags.DEFINE_integer("phases", 4, "PPO: phases per host run (noise held per phase).")
_GENS = flags.DEFINE_integer("generations", 150, "Generations (ES) or iterations (PPO).")
_SIGMA = flags.DEFINE_float("sigma", 0.05, "Perturbation scale of the parameters.")
_LR = flags.DEFINE_float("lr", 0.02, "Adam learning rate on the mean parameters.")
_SEED = flags.DEFINE_integer("seed", 0, "Search seed.")
_SAVE_EVERY = flags.DEFINE_integer("save_every", 10, "Write policy.msgpack every N generations.")
_STREAM = flags.DEFINE_bool("stream", False, "ES on the config's stream (see the docstring).")
_WINDOW = flags.DEFINE_integer("window", 10, "With --stream: the last tasks a policy is scored on.")
_REMEDY = flags.DEFINE_string("remedy", "", "With --stream: a plasticity remedy run beside it.")


def _schedule_free(space: PlanSpace) -> PlanSpace:
    """``space`` with the deployment's schedule fields at the defaults (for --init checks)."""
    default = PlanSpace(base=space.base)
    return dataclasses.replace(space, **{f: getattr(default, f) for f in DEPLOY_FIELDS})


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    config = _CONFIG.value.copy_and_resolve_references()
    config.data.extra_val, config.data.extra_test = paired.EXTRA_VAL, paired.EXTRA_TEST
    config.data.monitor = paired.MONITOR
    config.prune.distribution = _DIST.value
    space = PlanSpace.breathing() if _BASE.value == "breathing" else PlanSpace.gmp()
    if _STREAM.value:
        if "stream" not in config or _TRAINER.value != "es":
            raise app.UsageError("--stream needs --trainer=es and a stream config "
                                 "(--config=experiments/configs/stream.py)")  # fmt: skip
        space = stream_train.STREAM_SPACE
    network = PlanNetwork()
    configs = [] if _STREAM.value else es_train.group_configs(config, _GROUPS.value)
    params = es_train.template_params(config, network, _SEED.value)
    if _INIT.value:  # a warm start (the file's network and space must be these)
        params, net0, space0, _ = load_policy(SHIPPED if _INIT.value == "shipped" else _INIT.value)
        same = _schedule_free(space0) == _schedule_free(space) if _STREAM.value else space0 == space
        if net0 != network or not same:
            raise app.UsageError(f"--init {_INIT.value}: another network or plan space")
    path = os.path.join(workdir, "policy.msgpack")
    names = [name for name, _ in configs] or [_GROUPS.value or "64,64"]
    info = {"trainer": _TRAINER.value, "groups": names, "init": _INIT.value,
            "stream": _STREAM.value, "remedy": _REMEDY.value,
            "sparsity": float(config.prune.sparsity), "distribution": config.prune.distribution,
            "seed": _SEED.value}  # fmt: skip

    def report(row):
        fit = row.get("fitness_mean", row.get("val_accuracy"))
        print(f"{row.get('generation', row.get('iteration')):3d} fitness {fit:.4f} "
              f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip

    def checkpoint(generation, mean):
        if (generation + 1) % _SAVE_EVERY.value == 0:
            save_policy(path, mean, network, space, generation=generation + 1, **info)

    if _TRAINER.value == "es":
        if _STREAM.value:
            widths = es_train.parse_population(_GROUPS.value or "64,64")
            groups = stream_train.stream_groups(config, widths, network, params, space,
                                                _WINDOW.value, _REMEDY.value)  # fmt: skip
        else:
            groups = es_train.policy_groups(configs, space, network, params)
        cfg = es_search.SearchConfig(_POP.value, _SEEDS.value, _GENS.value, _SIGMA.value,
                                     _LR.value, _SEED.value)  # fmt: skip
        search = es_search.run_search(groups, params, cfg, workdir, report, on_mean=checkpoint)
        final, log = search.mean, search.log
    else:
        groups = ppo_train.plan_groups(configs, space)
        cfg = ppo_plans.PlanPPOConfig(seeds=_PPO_SEEDS.value, group_size=_GROUP.value,
                                      phases=_PHASES.value)  # fmt: skip
        final, log = ppo_train.run_ppo(groups, network, params, cfg, _GENS.value, workdir,
                                       _SEED.value, report, on_params=checkpoint)  # fmt: skip
        keys = ("fitness_mean", "fitness_min", "fitness_max")
        log = [{"generation": r["iteration"], **dict.fromkeys(keys, r["val_accuracy"])}
               for r in log]  # fmt: skip
    print(f"{_TRAINER.value}: groups {[g.name for g in groups]}, {config.prune.sparsity:g} "
          f"{config.prune.distribution}, neutral {space.base}", flush=True)  # fmt: skip
    save_policy(path, final, network, space, generation=_GENS.value, **info)
    es_search.plot_log(log, os.path.join(workdir, "fitness.png"))
    print(f"wrote {path}, the log and fitness.png")


if __name__ == "__main__":
    app.run(main)
