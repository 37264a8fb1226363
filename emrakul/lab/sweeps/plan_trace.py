"""What a plan-following controller decided, interval by interval, against the heuristics.

:func:`trace` trains one host with a controller that records its last raw plan (the Magistrate)
or holds a fixed one (``planned``) and returns the concrete knobs at every surgery with the
realised per-layer sparsity; :func:`plot` draws, per layer, the final kept fraction next to
what uniform and ERK allocation keep, the score-mix weights, decay / hysteresis / churn, and the
sparsity schedule next to GMP's cubic one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emrakul.controllers.plan_space import MIX_FEATURES, PlanSpace
from emrakul.lab.loop import make_train
from emrakul.surgery.budgets import layer_sparsities


def space_of(controller: str, kwargs: dict[str, Any]) -> PlanSpace:
    """The plan space of a ``magistrate`` or ``planned`` controller built with ``kwargs``.

    Raises:
      ValueError: another controller.
    """
    if controller == "magistrate":
        from emrakul.controllers.magistrate import load_policy, policy_path

        return load_policy(policy_path(kwargs.get("policy") or ""))[2]
    if controller == "planned":
        from emrakul.controllers.planned import load_plan

        if kwargs.get("plan"):
            saved = load_plan(kwargs["plan"])[1]
            base, start, end = saved["base"], saved["start"], saved["end"]
        else:
            base = kwargs.get("base", "breathing")
            start, end = kwargs.get("start", 0.2), kwargs.get("end", 0.8)
        make = PlanSpace.breathing if base == "breathing" else PlanSpace.gmp
        return make(start=float(start), end=float(end))
    raise ValueError(f"only magistrate and planned arms follow plans, not {controller!r}")


def trace(
    config: ml_collections.ConfigDict, controller: Any, space: PlanSpace, seed: int = 1000
) -> dict[str, Any]:
    """The knobs at every surgery (``[intervals, ...]``) and the per-layer sparsity of one run."""
    trainer = make_train(config, controller)

    def body(state, _):
        state, metrics = trainer.interval(state)
        knobs = space.knobs(state.opt_state.controller.plan)
        return state, (knobs, metrics.layer_sparsity, metrics.step)

    run = jax.jit(lambda k: jax.lax.scan(body, trainer.init(k), None, trainer.num_intervals))
    _, (knobs, layer_sparsity, step) = run(jax.random.PRNGKey(seed))
    shapes = [tuple(jnp.shape(s)) for s in jax.tree.leaves(trainer.init(
        jax.random.PRNGKey(0)).opt_state.life.state) if jnp.ndim(s) > 0]  # fmt: skip
    return {
        "knobs": jax.tree.map(np.asarray, knobs._asdict()),
        "layer_sparsity": np.asarray(layer_sparsity),
        "progress": np.asarray(step) / (trainer.num_intervals * trainer.steps_per_interval),
        "layers": list(trainer.layer_names),
        "uniform": 1 - layer_sparsities(shapes, float(config.prune.sparsity), "uniform"),
        "erk": 1 - layer_sparsities(shapes, float(config.prune.sparsity), "erk"),
        "space": space,
    }


def plot(t: dict[str, Any], path: str, title: str = "") -> None:
    """Four panels: final allocation, score mix, decay / hysteresis / churn, schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, prog, names = t["knobs"], t["progress"], t["layers"]
    num = len(names)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    x = np.arange(num)
    ax = axes[0, 0]
    for i, (label, values) in enumerate((("uniform", t["uniform"]), ("ERK", t["erk"]),
                                         ("learned", 1 - t["layer_sparsity"][-1]))):  # fmt: skip
        ax.bar(x + (i - 1) * 0.27, values, 0.27, label=label)
    ax.set_xticks(x, [n.split("/")[0] for n in names], fontsize=7)
    ax.set_ylabel("kept fraction at the end")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for layer in range(num):
        for f, feat in enumerate(MIX_FEATURES):
            ax.plot(prog, k["mix"][:, layer, f], label=f"L{layer} {feat}", lw=1)
    ax.set_title(f"score-mix deviations from {t['space'].base} (0 = heuristic)", fontsize=9)
    ax.legend(fontsize=5, ncol=2)
    ax = axes[1, 0]
    for name, style in (("decay", "-"), ("hysteresis", "--"), ("churn", ":")):
        for layer in range(num):
            ax.plot(prog, k[name][:, layer], style, label=f"L{layer} {name}", lw=1)
    ax.legend(fontsize=5, ncol=3)
    ax.set_xlabel("progress")
    ax = axes[1, 1]
    final = t["layer_sparsity"][-1]
    lo, hi = t["space"].start, t["space"].end
    cubic = 1 - (1 - np.clip((prog - lo) / (hi - lo), 0, 1)) ** 3
    for layer in range(num):
        line = ax.plot(prog, t["layer_sparsity"][:, layer], label=f"L{layer} learned")[0]
        ax.plot(prog, final[layer] * cubic, ":", color=line.get_color(), lw=1)
    ax.set_title("sparsity per layer (dotted: GMP's cubic to the same endpoint)", fontsize=9)
    ax.set_xlabel("progress")
    ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
