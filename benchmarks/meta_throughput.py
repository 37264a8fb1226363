"""Host steps per second inside the compiled meta-training program vs the plain loop.

Run: ``python -m benchmarks.meta_throughput [--runs 16] [--rounds 5] [--groups "64,64;32,32,32"]``

For every host group of the meta-training population, the same ``--runs`` whole host runs
(1000 steps, MNIST-1D, 95% ERK) are timed four ways, interleaved, medians:

* ``loop breathing``: the plain loop (``jit(vmap(trainer.train))``) with the neutral heuristic;
* ``loop magistrate``: the plain loop with the Magistrate (an untrained policy: the same work
  as a trained one);
* ``ES program``: :func:`emrakul.lab.meta.es.population_scores`, ``runs / 2`` policies x 2 host
  seeds, each run scored on the whole validation split (what ES meta-training executes);
* ``PPO rollout``: :func:`emrakul.lab.meta.plan_rollout.rollout_host` vmapped over the runs
  (4 phases; the PPO update itself is not included).

Target (issue 17): the meta-training program at least 0.8x the host steps/s of the plain loop.
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
import jax.numpy as jnp

from benchmarks._timing import interleaved_medians, markdown_table
from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.magistrate import policy_controller
from emrakul.controllers.plan_space import PlanSpace, SurgeryPlan
from emrakul.lab.loop import make_train
from emrakul.lab.meta import es, es_train, plan_rollout, ppo_train
from emrakul.lab.sweeps import paired
from experiments.configs.agent import get_config


def _config():
    c = paired.host_config(get_config(), "meta")
    c.prune.distribution = "erk"
    return c


def _candidates(widths, runs: int) -> dict:
    config = _config()
    config.host.width = tuple(widths)
    net, space = PlanNetwork(), PlanSpace.breathing()
    params = es_train.template_params(config, net)
    keys = jax.random.split(jax.random.PRNGKey(0), runs)
    plain = make_train(config, "breathing")
    learned = make_train(config, policy_controller(space, params, net))
    named = [(",".join(map(str, widths)), config)]
    (group,) = es_train.policy_groups(named, space, net, params)
    genomes = jax.tree.map(lambda x: jnp.stack([x] * (runs // 2)), params)
    scores = es.scores_fn([group])
    (pgroup,) = ppo_train.plan_groups(named, space)
    log_std = {f: jnp.float32(math.log(0.3)) for f in SurgeryPlan._fields}
    roll = functools.partial(plan_rollout.rollout_host, pgroup.trainer, pgroup.layout, net,
                             params, log_std, 4, pgroup.layout.num_regions,
                             pgroup.layout.num_layers)  # fmt: skip
    roll = jax.jit(jax.vmap(roll))
    fns = {
        "loop breathing": functools.partial(jax.jit(jax.vmap(plain.train)), keys),
        "loop magistrate": functools.partial(jax.jit(jax.vmap(learned.train)), keys),
        "ES program": functools.partial(scores, genomes, keys[:2]),
        "PPO rollout": functools.partial(roll, keys, keys),
    }
    return fns, runs * plain.num_intervals * plain.steps_per_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--groups", default="64,64;32,32,32")
    args = parser.parse_args()
    rows = []
    for widths in es_train.parse_population(args.groups):
        fns, steps = _candidates(widths, args.runs)
        med = interleaved_medians(fns, rounds=args.rounds, warmup=1)
        base = steps / med["loop breathing"]
        for name in fns:
            rate = steps / med[name]
            rows.append([",".join(map(str, widths)), name, f"{med[name]:.2f}", f"{rate:.0f}",
                         f"{rate / base:.3f}"])  # fmt: skip
        print(f"timed {widths}", flush=True)
    print(f"\njax {jax.__version__}, {jax.default_backend()}, {args.runs} host runs of 1000 steps "
          f"per candidate, median of {args.rounds} interleaved rounds")  # fmt: skip
    print(markdown_table(["host", "program", "s", "host steps/s", "ratio to loop breathing"], rows))


if __name__ == "__main__":
    main()
