"""What a stream comparison produced: per-task metrics, the plasticity table, plots.

Per arm, over seeds (mean and 95% Student-t interval): the held-out accuracy at the end of each
task averaged over the first and over the last ``window`` tasks, the plasticity ratio
(last-window average over first-window average, per seed), the online accuracy, the dormant
fraction, the effective rank and the sparsity of the last task; and the paired difference of
the last-window accuracy against ``dense`` and against the best remedy (same seeds, same
stream), the best remedy chosen on the validation split's last-window accuracy. Written into
the work directory: ``metrics.jsonl`` (one row per arm, seed and task), ``summary.json``,
``summary.md`` and the plots ``accuracy_by_task.png`` and ``plasticity_signs.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from emrakul.lab.stats import mean_ci
from emrakul.lab.sweeps.stream import ArmResult, rows


def _ci(values) -> dict[str, float]:
    mean, ci = mean_ci(np.asarray(values, np.float64))
    return {"mean": mean, "ci95": ci}


def summarize(results: Sequence[ArmResult], window: int = 10) -> dict[str, dict]:
    """Per arm: the plasticity measurements (module docstring), per seed and aggregated."""
    base = next((r for r in results if r.arm == "dense"), None)
    out = {}
    for r in results:
        m = r.metrics
        tasks = m.test_accuracy.shape[1]
        w = max(1, min(window, tasks // 2))
        first = m.test_accuracy[:, :w].mean(1)
        last = m.test_accuracy[:, -w:].mean(1)
        entry = {
            "seeds": list(r.seeds),
            "window": w,
            "first": _ci(first),
            "last": _ci(last),
            "last_per_seed": last.tolist(),
            "plasticity": _ci(last / np.maximum(first, 1e-9)),
            "val_last": _ci(m.val_accuracy[:, -w:].mean(1)),
            "train_last": _ci(m.train_accuracy[:, -w:].mean(1)),
            "online_last": _ci(m.online_accuracy[:, -w:].mean(1)),
            "dormant": _ci(m.dormant[:, -1]),
            "effective_rank": _ci(m.effective_rank[:, -1]),
            "sparsity": _ci(m.sparsity[:, -1]),
            "seconds": r.seconds,
        }
        if base is not None and base.seeds == r.seeds and r.arm != "dense":
            entry["last_minus_dense"] = _ci(last - base.metrics.test_accuracy[:, -w:].mean(1))
        out[r.arm] = entry
    best = best_on_validation(out)
    for arm, entry in out.items():
        if best is not None and arm != best and out[best]["seeds"] == entry["seeds"]:
            ref = np.asarray(out[best]["last_per_seed"])
            entry["last_minus_best_remedy"] = _ci(np.asarray(entry["last_per_seed"]) - ref)
    return out


REMEDIES = ("continual_backprop", "redo", "shrink_perturb", "selective_forgetting")


def best_on_validation(summary: dict[str, dict], arms: Sequence[str] = REMEDIES) -> str | None:
    """The arm among ``arms`` with the best last-window validation accuracy (``None``: none ran)."""
    ran = [a for a in arms if a in summary]
    return max(ran, key=lambda a: summary[a]["val_last"]["mean"]) if ran else None


def _fmt(c: dict[str, float], digits: int = 3) -> str:
    if not np.isfinite(c["ci95"]):
        return f"{c['mean']:.{digits}f}"
    return f"{c['mean']:.{digits}f} ± {c['ci95']:.{digits}f}"


def markdown(summary: dict[str, dict]) -> str:
    """The result table (mean ± 95% CI over seeds)."""
    w = next(iter(summary.values()))["window"] if summary else 10
    lines = [
        f"| arm | seeds | first {w} tasks | last {w} tasks | last - dense (paired) | "
        "last - best remedy (paired) | plasticity ratio | dormant | eff. rank | sparsity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        delta = _fmt(s["last_minus_dense"]) if "last_minus_dense" in s else "-"
        to_best = _fmt(s["last_minus_best_remedy"]) if "last_minus_best_remedy" in s else "-"
        lines.append(
            f"| {arm} | {len(s['seeds'])} | {_fmt(s['first'])} | {_fmt(s['last'])} | {delta} | "
            f"{to_best} | {_fmt(s['plasticity'])} | {_fmt(s['dormant'])} | "
            f"{_fmt(s['effective_rank'], 1)} | {s['sparsity']['mean']:.3f} |"
        )
    lines.append(
        "\nAccuracy: held-out test examples under each task's transform, at the task's end."
    )
    best = best_on_validation(summary)
    if best is not None:
        lines.append(f"Best remedy on validation (last {w} tasks): {best}.")
    return "\n".join(lines)


def write(workdir: str, results: Sequence[ArmResult], window: int = 10) -> dict:
    """Writes metrics.jsonl, summary.json, summary.md and the plots; returns the summary."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for r in results:
            for row in rows(r):
                f.write(json.dumps(row) + "\n")
    summary = summarize(results, window)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(markdown(summary) + "\n")
    plot(workdir, results)
    return summary


def plot(workdir: str, results: Sequence[ArmResult]) -> None:
    """Accuracy against task index per arm; dormant fraction, effective rank, weight norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        acc = r.metrics.test_accuracy
        task = np.arange(1, acc.shape[1] + 1)
        ax.plot(task, acc.mean(0), label=r.arm)
        ax.fill_between(task, acc.min(0), acc.max(0), alpha=0.12)
    ax.set_xlabel("task")
    ax.set_ylabel("held-out accuracy at the task's end")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "accuracy_by_task.png"), dpi=100)
    plt.close(fig)

    fields = [("dormant", "dormant fraction (tau = 0)"), ("effective_rank", "effective rank"),
              ("weight_norm", "weight norm"), ("sparsity", "sparsity")]  # fmt: skip
    fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.5))
    for ax, (field, label) in zip(axes, fields, strict=True):
        for r in results:
            v = np.asarray(getattr(r.metrics, field))
            ax.plot(np.arange(1, v.shape[1] + 1), v.mean(0), label=r.arm)
        ax.set_xlabel("task")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "plasticity_signs.png"), dpi=100)
    plt.close(fig)
