"""A grid sweep: controllers x sparsities x seeds (seeds in one program per cell).

    python -m experiments.sweep --workdir /tmp/sweep \
        --controllers=dense,gmp,rigl --sparsities=0.9,0.95 --seeds=8

Each finished cell (controller, sparsity) appends one row per seed to ``WORKDIR/results.csv``;
cells already there are skipped, so an interrupted sweep resumes where it stopped (a cell
interrupted midway also resumes from its orbax checkpoint). At the end it writes
``results.md`` (mean ± 95% CI of test accuracy and the final sparsity per cell) and
``accuracy_vs_sparsity.png``.

``--shard`` splits each cell's seeds over all devices (the seed count must be a multiple of the
device count); the multi-host flags of :mod:`experiments.scale_flags` run one sweep over
several processes, of which only process 0 writes files.
"""

from __future__ import annotations

import csv
import os

from absl import app, flags, logging
from ml_collections import config_flags

from emrakul.lab.config import apply_runtime_options, validate
from emrakul.lab.runner import run_controller
from emrakul.lab.stats import mean_ci
from experiments.scale_flags import SHARD, start

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"), "Base config."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_CONTROLLERS = flags.DEFINE_list("controllers", ["dense", "gmp", "rigl"], "Controllers.")
_SPARSITIES = flags.DEFINE_list("sparsities", ["0.9", "0.95"], "Target sparsities.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds per cell (one program; config.run.seed_loop).")

FIELDS = ["controller", "sparsity", "seed", "test_accuracy", "test_loss", "final_sparsity",
          "flip_flops", "seconds"]  # fmt: skip


def read_rows(path: str) -> list[dict]:
    """Rows of the results CSV (empty if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def done_cells(rows: list[dict]) -> set[tuple[str, float]]:
    return {(r["controller"], round(float(r["sparsity"]), 6)) for r in rows}


def table(rows: list[dict]) -> str:
    """Markdown: one line per cell, mean ± 95% CI of the test accuracy and final sparsity."""
    cells: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["controller"], float(r["sparsity"])), []).append(r)
    lines = [
        "| controller | target sparsity | seeds | test accuracy (mean ± 95% CI) | final sparsity |",
        "|---|---|---|---|---|",
    ]
    for (name, sp), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m, ci = mean_ci([float(r["test_accuracy"]) for r in rs])
        fs = [float(r["final_sparsity"]) for r in rs]
        lines.append(
            f"| {name} | {sp:g} | {len(rs)} | {m:.4f} ± {ci:.4f} | {min(fs):.4f}-{max(fs):.4f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r["controller"] for r in rows}):
        sps = sorted({float(r["sparsity"]) for r in rows if r["controller"] == name})
        stats = [
            mean_ci([float(r["test_accuracy"]) for r in rows
                     if r["controller"] == name and float(r["sparsity"]) == sp])
            for sp in sps
        ]  # fmt: skip
        ax.errorbar(sps, [s[0] for s in stats], yerr=[s[1] for s in stats], label=name,
                    marker="o", capsize=3)  # fmt: skip
    ax.set_xlabel("target sparsity")
    ax.set_ylabel("test accuracy (mean ± 95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv) -> None:
    del argv
    writer = start()  # joins a multi-host runtime when asked; only process 0 writes files
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    base = _CONFIG.value
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    names = [c.strip() for c in _CONTROLLERS.value]
    sparsities = [float(s) for s in _SPARSITIES.value]
    validate(base, names)
    apply_runtime_options(base)
    path = os.path.join(workdir, "results.csv")
    finished = done_cells(read_rows(path))
    for sp in sparsities:
        for name in names:
            if (name, round(sp, 6)) in finished:
                print(f"skip {name} @ {sp}: already in {path}")
                continue
            config = base.copy_and_resolve_references()
            config.prune.sparsity = sp
            validate(config, [name])
            cell = os.path.join(workdir, "cells", f"{name}_{sp:g}")
            r = run_controller(config, name, seeds=_SEEDS.value, workdir=cell,
                               chunk=int(config.run.chunk), shard=SHARD.value)  # fmt: skip
            if not writer:
                continue
            new = not os.path.exists(path)
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, FIELDS)
                if new:
                    w.writeheader()
                for s in range(len(r.test["accuracy"])):
                    w.writerow({
                        "controller": name, "sparsity": sp, "seed": s,
                        "test_accuracy": float(r.test["accuracy"][s]),
                        "test_loss": float(r.test["loss"][s]),
                        "final_sparsity": float(r.metrics.sparsity[s, -1]),
                        "flip_flops": int(r.metrics.reversals[s, -1].sum()),
                        "seconds": r.seconds,
                    })  # fmt: skip
    if not writer:
        return
    rows = read_rows(path)
    md = table(rows)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(md + "\n")
    plot(rows, os.path.join(workdir, "accuracy_vs_sparsity.png"))
    print(md)


if __name__ == "__main__":
    app.run(main)
