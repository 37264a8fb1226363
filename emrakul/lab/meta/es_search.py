"""A resumable evolution-strategies search (evosax's OpenAI-ES) over genomes of host groups.

Each generation asks evosax for ``population`` genomes (antithetic pairs), trains every group's
hosts with each of them on ``seeds`` host seeds shared by all genomes (common random numbers,
fresh seeds every generation, so the objective is the expected validation accuracy over hosts),
and tells evosax the fitness (:func:`emrakul.lab.meta.es.fitness`, ranked and centred). The ES
state is saved after every generation (``WORKDIR/es_state``, orbax) with one JSON line per
generation in ``WORKDIR/es_log.jsonl``; a search restarted on the same directory resumes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from emrakul.lab.meta import es


class SearchConfig(NamedTuple):
    """Hyperparameters of the search.

    Attributes:
      population: genomes per generation (even: antithetic pairs).
      seeds: host seeds per genome and group per generation (shared by all genomes).
      generations: generations in all (a resumed search continues up to this number).
      sigma: the perturbation scale.
      lr: Adam's learning rate on the mean genome.
      seed: the search's seed (perturbations and host seeds).
    """

    population: int = 16
    seeds: int = 4
    generations: int = 100
    sigma: float = 0.3
    lr: float = 0.05
    seed: int = 0


def check_search(cfg: SearchConfig) -> None:
    """Raises ``ValueError`` naming a bad field."""
    if cfg.population < 2 or cfg.population % 2:
        raise ValueError(f"population must be even and >= 2, got {cfg.population}")
    for name in ("seeds", "generations"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not (cfg.sigma > 0 and cfg.lr > 0):
        raise ValueError(f"sigma and lr must be > 0, got {cfg.sigma}, {cfg.lr}")


def _strategy(template: es.Genome, cfg: SearchConfig):
    from evosax.algorithms import Open_ES

    return Open_ES(
        population_size=cfg.population,
        solution=template,
        use_antithetic_sampling=True,
        optimizer=optax.adam(cfg.lr),
        std_schedule=optax.constant_schedule(cfg.sigma),
    )


def host_keys(cfg: SearchConfig, generation: int) -> jax.Array:
    """The host seeds of one generation (the same for every genome of it)."""
    return jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), generation),
                            cfg.seeds)  # fmt: skip


class Search(NamedTuple):
    """The outcome of :func:`run_search`: the mean genome and the generations' log rows."""

    mean: es.Genome
    log: list[dict[str, Any]]


def _restore(workdir: str, template_state: Any) -> tuple[Any, int]:
    path = os.path.join(workdir, "es_state")
    meta = os.path.join(workdir, "es_generation.json")
    if not (os.path.isdir(path) and os.path.exists(meta)):
        return template_state, 0
    with open(meta) as f:
        done = int(json.load(f)["generation"])
    return ocp.StandardCheckpointer().restore(path, template_state), done


def _save(workdir: str, state: Any, generation: int) -> None:
    path = os.path.join(workdir, "es_state")
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(path, state, force=True)
    ckpt.wait_until_finished()
    with open(os.path.join(workdir, "es_generation.json"), "w") as f:
        json.dump({"generation": generation}, f)


def _log_row(generation: int, fit: jax.Array, scores: Sequence[es.Scores], seconds: float):
    f = np.asarray(fit)
    return {
        "generation": generation,
        "fitness_mean": float(f.mean()),
        "fitness_max": float(f.max()),
        "fitness_min": float(f.min()),
        "test_accuracy_mean": float(np.mean([np.asarray(s.test_accuracy) for s in scores])),
        "sparsity_mean": float(np.mean([np.asarray(s.sparsity) for s in scores])),
        "seconds": seconds,
    }


def run_search(
    groups: Sequence[es.HostGroup],
    template: es.Genome,
    cfg: SearchConfig,
    workdir: str,
    report: Callable[[dict[str, Any]], None] | None = print,
    on_mean: Callable[[int, es.Genome], None] | None = None,
) -> Search:
    """Runs (or resumes) the search from the mean ``template`` (e.g. the neutral genome).

    ``report(row)`` gets each generation's log row, ``on_mean(generation, mean)`` the mean genome
    after it (to save it).

    Raises:
      ValueError: a bad search config.
    """
    check_search(cfg)
    os.makedirs(workdir, exist_ok=True)
    strategy = _strategy(template, cfg)
    params = strategy.default_params
    state = strategy.init(jax.random.PRNGKey(cfg.seed), template, params)
    state, start = _restore(workdir, state)
    scores_of = es.scores_fn(groups)
    ask = jax.jit(strategy.ask)
    tell = jax.jit(strategy.tell)
    log_path = os.path.join(workdir, "es_log.jsonl")
    for gen in range(start, cfg.generations):
        t0 = time.time()
        k_ask, k_tell = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), gen))
        genomes, state = ask(k_ask, state, params)
        scores = scores_of(genomes, host_keys(cfg, gen))
        fit = jax.block_until_ready(es.fitness(scores))
        state, _ = tell(k_tell, genomes, -fit, state, params)  # evosax minimises
        row = _log_row(gen, fit, scores, time.time() - t0)
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        _save(workdir, state, gen + 1)
        if report is not None:
            report(row)
        if on_mean is not None:
            on_mean(gen, strategy.get_mean(state))
    log = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            log = [json.loads(line) for line in f if line.strip()]
    return Search(strategy.get_mean(state), log)


def plot_log(log: Sequence[dict[str, Any]], path: str) -> None:
    """The fitness (mean, min, max over the population) per generation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [r["generation"] for r in log]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(gens, [r["fitness_mean"] for r in log], label="population mean")
    ax.fill_between(gens, [r["fitness_min"] for r in log], [r["fitness_max"] for r in log],
                    alpha=0.3, label="min-max")  # fmt: skip
    ax.set_xlabel("generation")
    ax.set_ylabel("validation accuracy (fitness)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean_scores(groups: Sequence[es.HostGroup], genome: es.Genome, keys: jax.Array):
    """The scores of one genome (no population axis) on ``keys``, per group ``[S]``."""
    batched = jax.tree.map(lambda x: jnp.asarray(x)[None], genome)
    return tuple(jax.tree.map(lambda x: x[0], s) for s in es.scores_fn(groups)(batched, keys))
