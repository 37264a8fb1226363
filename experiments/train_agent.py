"""Meta-trains the Magistrate (the learned controller) on a population of MNIST-1D hosts.

    python -m experiments.train_agent --workdir /work/runs/agent_es

Evolution strategies (evosax's OpenAI-ES, antithetic pairs, centred ranks) on the plan
network's parameters (:mod:`emrakul.lab.meta.es_train`): every generation trains
``--population`` policies x the host groups of ``--groups`` (hidden widths, ``;``-separated) x
``--seeds`` host seeds shared by all policies (common random numbers), all in one compiled
program, and scores each policy by the hosts' mean validation accuracy (2,400 examples) at the
end of training. The search starts at the neutral heuristic (``--base`` with the config's
distribution) and resumes from ``WORKDIR/es_state``. Writes ``es_log.jsonl``,
``fitness.png`` and ``policy.msgpack`` (every ``--save_every`` generations and at the end),
which ``--config.controllers.magistrate.policy=WORKDIR/policy.msgpack`` deploys.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.magistrate import save_policy
from emrakul.controllers.plan_space import PlanSpace
from emrakul.lab.meta import es_search, es_train
from emrakul.lab.sweeps import paired

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "agent.py"), "Host config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_GROUPS = flags.DEFINE_string("groups", "", "Host groups: hidden widths, ';'-separated.")
_BASE = flags.DEFINE_enum("base", "breathing", ["breathing", "gmp"], "Neutral heuristic.")
_POP = flags.DEFINE_integer("population", 16, "Policies per generation (even).")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Host seeds per policy, group and generation.")
_GENS = flags.DEFINE_integer("generations", 150, "Generations.")
_SIGMA = flags.DEFINE_float("sigma", 0.05, "Perturbation scale of the parameters.")
_LR = flags.DEFINE_float("lr", 0.02, "Adam learning rate on the mean parameters.")
_SEED = flags.DEFINE_integer("seed", 0, "Search seed.")
_SAVE_EVERY = flags.DEFINE_integer("save_every", 10, "Write policy.msgpack every N generations.")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    config = _CONFIG.value.copy_and_resolve_references()
    config.data.extra_val, config.data.extra_test = paired.EXTRA_VAL, paired.EXTRA_TEST
    config.data.monitor = paired.MONITOR
    config.prune.distribution = config.prune.get("distribution", "erk")
    space = PlanSpace.breathing() if _BASE.value == "breathing" else PlanSpace.gmp()
    network = PlanNetwork()
    shapes = es_train.parse_population(_GROUPS.value)
    params = es_train.template_params(config, network, _SEED.value)
    groups = es_train.policy_groups(config, shapes, space, network, params)
    cfg = es_search.SearchConfig(_POP.value, _SEEDS.value, _GENS.value, _SIGMA.value, _LR.value,
                                 _SEED.value)  # fmt: skip
    print(f"ES: {cfg.population} policies x {len(groups)} groups {[g.name for g in groups]} x "
          f"{cfg.seeds} seeds, {config.prune.sparsity:g} {config.prune.distribution}, "
          f"neutral {space.base}", flush=True)  # fmt: skip
    info = {"trainer": "es", "groups": [g.name for g in groups], **cfg._asdict(),
            "sparsity": float(config.prune.sparsity),
            "distribution": config.prune.distribution}  # fmt: skip
    path = os.path.join(workdir, "policy.msgpack")

    def report(row):
        print(f"gen {row['generation']:3d} fitness mean {row['fitness_mean']:.4f} max "
              f"{row['fitness_max']:.4f} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip

    def checkpoint(generation, mean):
        if (generation + 1) % _SAVE_EVERY.value == 0:
            save_policy(path, mean, network, space, generation=generation + 1, **info)

    search = es_search.run_search(groups, params, cfg, workdir, report, on_mean=checkpoint)
    save_policy(path, search.mean, network, space, generation=cfg.generations, **info)
    es_search.plot_log(search.log, os.path.join(workdir, "fitness.png"))
    print(f"wrote {path}, es_log.jsonl, fitness.png")


if __name__ == "__main__":
    app.run(main)
