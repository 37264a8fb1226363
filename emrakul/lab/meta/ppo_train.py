"""The PPO meta-training loop of the plan network: host groups, checkpoints, logs.

:func:`plan_groups` builds one host group per host config (their hosts follow a plan
written into the ``planned`` controller's state, :mod:`emrakul.lab.meta.plan_rollout`);
:func:`run_ppo` runs :func:`emrakul.lab.meta.ppo_plans.make_update` for a number of
iterations, checkpointing the whole state every iteration (``WORKDIR/ppo_state``) and appending
one JSON line per iteration to ``WORKDIR/ppo_log.jsonl``; a restarted run resumes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from emrakul import wrapper as wrap_mod
from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.plan_decision import region_layout
from emrakul.controllers.plan_space import PlanSpace
from emrakul.controllers.planned import plan_controller
from emrakul.lab.checkpoint import Checkpointer
from emrakul.lab.loop import make_train
from emrakul.lab.meta import ppo_plans


def plan_groups(
    configs: Sequence[tuple[str, ml_collections.ConfigDict]], space: PlanSpace
) -> list[ppo_plans.PlanGroup]:
    """One group per ``(name, config)`` (:func:`emrakul.lab.meta.es_train.group_configs`): a
    trainer with the ``planned`` controller and its region layout."""
    groups = []
    for name, c in configs:
        trainer = make_train(c, plan_controller(space))
        probe = trainer.init(jax.random.PRNGKey(0))
        obs = wrap_mod.state_observation(probe.params, probe.opt_state, total_steps=1)
        groups.append(ppo_plans.PlanGroup(trainer, region_layout(obs), name))
    return groups


def run_ppo(
    groups: Sequence[ppo_plans.PlanGroup],
    network: PlanNetwork,
    params: Any,
    cfg: ppo_plans.PlanPPOConfig,
    iterations: int,
    workdir: str,
    seed: int = 0,
    report: Callable[[dict[str, Any]], None] | None = print,
    on_params: Callable[[int, Any], None] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Runs (or resumes) PPO; returns the final network parameters and the log rows."""
    os.makedirs(workdir, exist_ok=True)
    r_max = max(g.layout.num_regions for g in groups)
    l_max = max(g.layout.num_layers for g in groups)
    update = ppo_plans.make_update(groups, network, cfg, r_max, l_max)
    state = ppo_plans.init_state(params, cfg, jax.random.PRNGKey(seed))
    ckpt = Checkpointer(os.path.join(workdir, "ppo_state"), max_to_keep=2)
    done = 0
    if restored := ckpt.restore_latest(jax.eval_shape(lambda: state)):
        done, state = restored
    log_path = os.path.join(workdir, "ppo_log.jsonl")
    for it in range(done, iterations):
        t0 = time.time()
        state, metrics = update(state)
        row = {"iteration": it, **{k: float(v) for k, v in metrics.items()},
               "seconds": time.time() - t0}  # fmt: skip
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        ckpt.save(it + 1, state)
        if report is not None:
            report(row)
        if on_params is not None:
            on_params(it, state.learner["params"])
    rows = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return state.learner["params"], rows
