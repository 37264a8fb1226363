"""The open-loop ceiling: evolution strategies over one fixed surgery plan for one host.

    python -m experiments.search_plan --workdir /work/runs/ceiling_meta_95 \
        --host=meta --sparsity=0.95 --distribution=erk --base=breathing

Searches the plan space of ``--base`` (its zero plan is that heuristic, exactly) with OpenAI-ES
(evosax), ``--population`` plans a generation, each trained on ``--seeds`` host seeds shared by
the whole generation (seeds below 1000: the evaluation's fresh seeds stay unseen), scored by the
validation accuracy at the end of training. Resumable (``WORKDIR/es_state``). Writes
``WORKDIR/plan.npz`` (the mean plan; evaluate it with ``experiments.evaluate --arms
ceiling=planned:erk --config.controllers.ceiling.plan=WORKDIR/plan.npz``), ``knobs.json`` (its
concrete values) and ``es_log.jsonl``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.controllers.plan_space import PlanSpace
from emrakul.controllers.planned import load_plan, save_plan
from emrakul.lab.meta import es_search, open_loop
from emrakul.lab.sweeps import paired

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"), "Base config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_HOST = flags.DEFINE_string("host", "meta", "Host preset (emrakul.lab.sweeps.paired.HOSTS).")
_SPARSITY = flags.DEFINE_float("sparsity", 0.95, "Global target sparsity.")
_DIST = flags.DEFINE_enum("distribution", "erk", ["uniform", "erk"], "Base allocation.")
_BASE = flags.DEFINE_enum("base", "breathing", ["breathing", "gmp"], "Neutral heuristic.")
_POP = flags.DEFINE_integer("population", 16, "Plans per generation (even).")
_SEEDS = flags.DEFINE_integer("seeds", 4, "Host seeds per plan and generation.")
_GENS = flags.DEFINE_integer("generations", 60, "Generations.")
_SIGMA = flags.DEFINE_float("sigma", 0.3, "Perturbation scale (raw plan units).")
_LR = flags.DEFINE_float("lr", 0.05, "Adam learning rate on the mean plan.")
_SEED = flags.DEFINE_integer("seed", 0, "Search seed.")
_INIT = flags.DEFINE_string("init", "", "Start from this plan.npz (same layer count) instead of 0.")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    config = paired.host_config(_CONFIG.value, _HOST.value)
    config.prune.sparsity = _SPARSITY.value
    config.prune.distribution = _DIST.value
    space = PlanSpace.breathing() if _BASE.value == "breathing" else PlanSpace.gmp()
    if _INIT.value and load_plan(_INIT.value)[1]["base"] != _BASE.value:
        raise app.UsageError(f"--init {_INIT.value} was searched with another --base")
    group = open_loop.plan_group(config, space, _HOST.value)
    probe = jax.eval_shape(group.trainer.init, jax.random.PRNGKey(0))
    plan_shape = probe.opt_state.controller.plan
    cfg = es_search.SearchConfig(_POP.value, _SEEDS.value, _GENS.value, _SIGMA.value, _LR.value,
                                 _SEED.value)  # fmt: skip
    template = open_loop.zero_genome(plan_shape.alloc.shape[0])
    if _INIT.value:  # a warm start, e.g. the ceiling of a host with as many layers
        start = load_plan(_INIT.value)[0]
        template = {f: jnp.asarray(getattr(start, f)) for f in open_loop.FIELDS}

    def report(row):
        print(f"gen {row['generation']:3d} fitness mean {row['fitness_mean']:.4f} max "
              f"{row['fitness_max']:.4f} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip

    search = es_search.run_search([group], template, cfg, _WORKDIR.value, report)
    plan = open_loop.genome_plan(search.mean, plan_shape.bias.shape[0])
    save_plan(os.path.join(_WORKDIR.value, "plan.npz"), plan, space)
    knobs = {k: np.asarray(v).tolist() for k, v in space.knobs(plan)._asdict().items()
             if k != "bias"}  # fmt: skip
    with open(os.path.join(_WORKDIR.value, "knobs.json"), "w") as f:
        json.dump(knobs, f, indent=1)
    es_search.plot_log(search.log, os.path.join(_WORKDIR.value, "fitness.png"))
    print(json.dumps(knobs))


if __name__ == "__main__":
    app.run(main)
