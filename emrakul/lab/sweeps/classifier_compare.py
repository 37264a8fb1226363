"""The main job's classifier branch: what comparing controllers on one host produced.

For each controller's :class:`~emrakul.lab.runner.Result` (seeds vmapped), written into the
work directory: ``metrics.jsonl`` (one row per controller, seed and surgery interval),
``summary.json`` and ``summary.md`` (final test accuracy, mean and 95% Student-t CI; final
sparsity; flip-flops) and the plots ``accuracy_loss.png``, ``layer_sparsity.png`` and
``mask_churn.png``. The RL branch is :mod:`emrakul.lab.sweeps.dqn_compare`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from emrakul.lab.runner import Result, rows
from emrakul.lab.stats import mean_ci


def summarize(results: Sequence[Result]) -> dict[str, dict]:
    """Per controller: final test accuracy (mean, 95% CI), final sparsity, timing."""
    out = {}
    for r in results:
        acc_mean, acc_ci = mean_ci(r.test["accuracy"])
        loss_mean, loss_ci = mean_ci(r.test["loss"])
        final_sparsity = r.metrics.sparsity[:, -1]
        out[r.controller] = {
            "seeds": len(r.test["accuracy"]),
            "seed_list": [r.seed_offset + i for i in range(len(r.test["accuracy"]))],
            "test_accuracy": [float(a) for a in r.test["accuracy"]],  # per seed
            "test_accuracy_mean": acc_mean,
            "test_accuracy_ci95": acc_ci,
            "test_loss_mean": loss_mean,
            "test_loss_ci95": loss_ci,
            "final_sparsity_mean": float(final_sparsity.mean()),
            "final_sparsity_min": float(final_sparsity.min()),
            "final_sparsity_max": float(final_sparsity.max()),
            "final_layer_sparsity": dict(
                zip(r.layer_names, r.metrics.layer_sparsity[:, -1].mean(0).tolist(), strict=True)
            ),
            "state_changes": int(r.metrics.changes[:, -1].sum(-1).mean()),
            "flip_flops": int(r.metrics.reversals[:, -1].sum(-1).mean()),
            "seconds": r.seconds,
        }
    return out


def markdown(summary: dict[str, dict], target: float | None = None) -> str:
    """A markdown result table."""
    head = "| controller | seeds | test accuracy (mean ± 95% CI) | final sparsity | flip-flops |"
    lines = [head, "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['seeds']} | {s['test_accuracy_mean']:.4f} ± "
            f"{s['test_accuracy_ci95']:.4f} | {s['final_sparsity_mean']:.4f} | {s['flip_flops']} |"
        )
    if target is not None:
        lines.append(f"\nTarget sparsity (pruning controllers): {target}")
    return "\n".join(lines)


def write(workdir: str, results: Sequence[Result], target: float | None = None) -> dict:
    """Writes metrics.jsonl, summary.json, summary.md and the plots; returns the summary."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for r in results:
            for row in rows(r):
                f.write(json.dumps(row) + "\n")
    summary = summarize(results)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(markdown(summary, target) + "\n")
    plot(workdir, results)
    return summary


def plot(workdir: str, results: Sequence[Result]) -> None:
    """Accuracy and loss vs step, per-layer sparsity over time, mask churn (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        step = r.metrics.step[0]
        for ax, field, label in [
            (axes[0], "val_accuracy", "validation accuracy"),
            (axes[1], "train_loss", "training loss"),
        ]:
            v = getattr(r.metrics, field)
            mean = v.mean(0)
            ax.plot(step, mean, label=r.controller)
            ax.fill_between(step, v.min(0), v.max(0), alpha=0.15)
            ax.set_xlabel("host step")
            ax.set_ylabel(label)
    axes[0].legend()
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "accuracy_loss.png"), dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        step = r.metrics.step[0]
        ls = r.metrics.layer_sparsity.mean(0)
        for j, name in enumerate(r.layer_names):
            ax.plot(step, ls[:, j], label=name)
        ax.set_title(r.controller)
        ax.set_xlabel("host step")
        ax.set_ylabel("layer sparsity")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "layer_sparsity.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        step = r.metrics.step[0]
        churn = (r.metrics.cut + r.metrics.grown).mean(-1).mean(0)
        ax.plot(step, churn, label=r.controller)
    ax.set_xlabel("host step")
    ax.set_ylabel("mask churn per surgery (cut + grown fraction)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "mask_churn.png"), dpi=100)
    plt.close(fig)
