"""What the vital signs' update period and compact state cost in decisions (issue 22).

For each controller that reads vital signs (``gsnr``, the learned ``magistrate``; breathing
does not read them) and each sparsity, the main job's classifier (``experiments/configs/
default.py``: MNIST-1D, MLP 40-256-256-10, 3000 steps, a surgery every 100) is trained on the
same seeds with vital signs updated on every step in full precision (``vitals_every=1``, the
reference) and with each candidate (the default period, and the default period with the compact
state). Per candidate: the paired difference of the final test accuracy to the reference (mean
and 95% t interval over the seeds) and the overlap of the final masks with the reference's
(Jaccard index of the ALIVE weights over all pruned kernels, per seed, mean and range).
``--step_horizon`` adds the period with the decay raised to it (``0.99 ** k`` per update: the
EMAs span the same host steps as at ``k = 1``, instead of ``k`` times more).

Run: ``python -m benchmarks.vitals_period_decisions [--seeds 8] [--seed_offset 1000]
[--controllers gsnr,magistrate] [--sparsities 0.9,0.95] [--every 10]``
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from emrakul.lab.loop import make_train
from emrakul.lab.stats import mean_ci
from emrakul.surgery.lifecycle import ALIVE
from experiments.configs import default

PERIOD = 10  # the candidate period (--every)


def train(controller: str, sparsity: float, every: int, compact: bool, seeds: list[int],
          steps: int = 0, step_horizon: bool = False):  # fmt: skip
    """Final test accuracies ``[S]`` and ALIVE masks (a list of ``[S, ...]`` bool arrays);
    ``step_horizon``: the decay raised to the period, so the EMAs span as many host steps as at
    ``every=1``."""
    config = default.get_config()
    if step_horizon:
        config.prune.vitals_decay = float(config.prune.vitals_decay) ** every
    if steps:
        config.train.steps = steps
    config.prune.sparsity = sparsity
    config.prune.vitals_every = every
    config.prune.compact_vitals = compact
    program = make_train(config, controller).program
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])

    @jax.jit
    def whole(keys):
        state = jax.vmap(program.init)(keys)
        state, _ = jax.vmap(lambda s: program.run(s, program.num_intervals))(state)
        return state, jax.vmap(program.final)(state)

    state, final = whole(keys)
    life = state.opt_state.life.state
    masks = [np.asarray(x) == ALIVE for x in jax.tree.leaves(life) if np.ndim(x) > 1]
    return np.asarray(final["accuracy"]), masks


def jaccard(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Per seed ``|a & b| / |a | b|`` over all pruned kernels (``[S]``)."""
    inter = sum(np.sum(x & y, axis=tuple(range(1, x.ndim))) for x, y in zip(a, b, strict=True))
    union = sum(np.sum(x | y, axis=tuple(range(1, x.ndim))) for x, y in zip(a, b, strict=True))
    return inter / union


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed_offset", type=int, default=1000)
    parser.add_argument("--controllers", default="gsnr,magistrate")
    parser.add_argument("--sparsities", default="0.9,0.95")
    parser.add_argument("--every", type=int, default=PERIOD)
    parser.add_argument("--steps", type=int, default=0, help="host steps (0: the config's)")
    parser.add_argument("--step_horizon", action="store_true",
                        help="add the candidate with the decay raised to the period")  # fmt: skip
    args = parser.parse_args()
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    candidates = [(f"every {args.every}", args.every, False, False),
                  (f"every {args.every}, compact", args.every, True, False)]  # fmt: skip
    if args.step_horizon:
        candidates.append((f"every {args.every}, decay^{args.every}", args.every, False, True))
    rows = []
    for name in args.controllers.split(","):
        for sp in (float(s) for s in args.sparsities.split(",")):
            t0 = time.perf_counter()
            ref_acc, ref_masks = train(name, sp, 1, False, seeds, args.steps)
            rows.append([name, f"{sp:g}", "every 1 (reference)", f"{ref_acc.mean():.4f}", "-", "-"])
            for label, every, compact, horizon in candidates:
                acc, masks = train(name, sp, every, compact, seeds, args.steps, horizon)
                diff, ci = mean_ci(list(acc - ref_acc))
                iou = jaccard(masks, ref_masks)
                rows.append([name, f"{sp:g}", label, f"{acc.mean():.4f}", f"{diff:+.4f} ± {ci:.4f}",
                             f"{iou.mean():.3f} ({iou.min():.3f}-{iou.max():.3f})"])  # fmt: skip
            print(f"{name} {sp:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    head = ["controller", "sparsity", "vital signs", "test accuracy", "paired diff to every 1",
            "mask Jaccard to every 1"]  # fmt: skip
    print(f"\n{len(seeds)} seeds ({seeds[0]}-{seeds[-1]}), mean ± 95% t interval")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
