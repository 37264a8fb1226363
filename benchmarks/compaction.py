"""Real savings of a pruned MLP: compacted vs masked-dense inference, and sparse checkpoint sizes.

Run: ``python -m benchmarks.compaction [--widths 1024,1024] [--rounds 30] [--serve 64]
[--burst 50] [--cold 100]``

1. Inference. An MLP ``784-1024-1024-10`` (1.86 M weights, 7.4 MB float32: large enough that
   the matmuls dominate a jitted forward pass at batch 256) with whole hidden units dead
   (random, exactly ``s * width`` per hidden layer; the output layer is never pruned), at unit
   sparsity 50% and 75%. Three jitted candidates are timed interleaved in one process (medians,
   ``benchmarks._timing``): the masked dense model with pre-masked weights (the same dense
   matmuls, zeros included), the masked dense model masking on the fly (``masks.apply`` inside
   the jitted forward, as during training), and the model compacted by
   :func:`emrakul.export.compact` (``hosts.MLP`` with the surviving widths). Speed-ups are
   against the pre-masked dense model, the stronger baseline. Goal: at least 1.7x at 50% and 3x
   at 75% (the FLOPs shrink by 2.8x and 6.9x). Batch 1 is timed twice: one request per jitted
   call from Python (per-call dispatch, ~0.1 ms, included), and ``--serve R`` requests of batch
   1 answered one after another inside one jitted call (``lax.map``; the row's times are per
   request), which measures the model rather than the dispatcher. Three batch-1 regimes in all:
   ``--burst K`` adds requests made one jitted call each, ``K`` back to back per timed round,
   each result awaited before the next call (times per request): a model serving a stream of
   single requests. The plain batch-1 row interleaves single calls of the three models, so
   every call starts with the other models' weights in the cache (and the compact model's
   after the 7.4 MB dense one's): an isolated request. ``--cold R`` adds a fourth: R rounds of
   single calls, each made right after reading a 64 MB buffer (caches evicted, the runtime's
   worker threads idle), the three models in a new random order every round; a trivial jitted
   function timed the same way gives the floor that every cold call pays whatever the model.
2. Checkpoint size on disk (sum of file sizes) of a ``784-512-512-10`` MLP with random weights:
   the dense params (orbax ``StandardCheckpointer``), :func:`emrakul.export.save` at 95%
   unstructured sparsity and with 2:4 masks (groups along the input axis), and, for reference,
   the 95%-masked params saved dense (orbax's zstd compression squeezes the zeros). Goals: 95%
   at most 12% of dense, 2:4 at most 56%.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from benchmarks._timing import back_to_back, cold_medians, interleaved_medians, markdown_table
from emrakul import export
from emrakul import masks as msk
from emrakul.lab import hosts
from emrakul.masks import nm_mask

COLD = "1 (cold: cache flushed)"


def unit_masks(params: dict, sparsity: float, rng: np.random.Generator) -> dict:
    """Masks with exactly ``round(sparsity * width)`` dead output units per hidden layer."""
    names = sorted(params, key=lambda n: int(n.split("_")[1]))
    out = {}
    for name in names:
        shape = params[name]["kernel"].shape
        alive = np.ones(shape[-1], bool)
        if name != names[-1]:
            alive[rng.permutation(shape[-1])[: round(sparsity * shape[-1])]] = False
        out[name] = {"kernel": jnp.asarray(np.broadcast_to(alive, shape)), "bias": jnp.bool_(True)}
    return out


def _served(apply_fn):
    """``apply_fn(*args, x)`` run on one request at a time, ``R`` requests in one jitted call."""

    def serve(*args):
        *head, xs = args
        return jax.lax.map(lambda x: apply_fn(*head, x[None])[0], xs)

    return jax.jit(serve)


def time_inference(
    widths: tuple[int, ...],
    sparsities: list[float],
    batches: list[int],
    rounds: int,
    serve: int,
    burst: int = 0,
    cold: int = 0,
) -> None:
    """Times the masked dense, mask-on-the-fly and compacted MLPs and prints one table.

    Args:
      widths: hidden widths of the dense MLP.
      sparsities: unit sparsities of the hidden layers (one compacted model each).
      batches: batch sizes timed as one jitted call each (interleaved rounds).
      rounds: interleaved rounds per case.
      serve: batch-1 requests served per jitted call (``lax.map``); 0: off.
      burst: batch-1 requests made as this many awaited jitted calls back to back; 0: off.
      cold: rounds of cold batch-1 calls (``cold_medians``, with a trivial jitted function
        timed in the same rounds as the floor of a cold call); 0: off.
    """
    model = hosts.MLP(features=widths, num_classes=10)
    rng = np.random.default_rng(0)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
    params = jax.tree.map(
        lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )
    apply = jax.jit(model.apply)
    masked = lambda p, m, x: model.apply({"params": msk.apply(p, m)}, x)
    apply_masked = jax.jit(masked)
    serve_dense, serve_masked = _served(model.apply), _served(masked)
    trivial = jax.jit(lambda x: x + 1.0)
    floors = []  # cold time of the trivial function, per cold case
    rows = []
    for s in sparsities:
        masks = unit_masks(params, s, rng)
        pre = msk.apply(params, masks)
        c = export.compact(params, masks)
        small = export.compact_model(model, c)
        apply_small = jax.jit(small.apply)
        cases = [(b, apply, apply_masked, apply_small, 1, str(b)) for b in batches]
        if cold:  # single batch-1 calls, each after a cache flush, in shuffled order
            cases.append((1, apply, apply_masked, apply_small, 1, COLD))
        if burst:  # a stream of batch-1 requests, one jitted call each, each awaited
            fns = tuple(back_to_back(f, burst) for f in (apply, apply_masked, apply_small))
            cases.append((1, *fns, burst, f"1 ({burst} calls back to back)"))
        if serve:  # batch-1 requests served in one compiled program: no per-call dispatch
            fns = (serve_dense, serve_masked, _served(small.apply))
            cases.append((serve, *fns, serve, f"1 ({serve} per call, scan)"))
        for batch, f_dense, f_masked, f_small, per_call, label in cases:
            x = jnp.asarray(rng.normal(size=(batch, 784)), jnp.float32)
            want = f_dense({"params": pre}, x)
            got = f_small({"params": c.params}, x)
            err = float(jnp.max(jnp.abs(want - got)))
            assert err < 1e-3, err
            candidates = {
                "dense": lambda x=x, pre=pre, f=f_dense: f({"params": pre}, x),
                "on_the_fly": lambda x=x, m=masks, f=f_masked: f(params, m, x),
                "compact": lambda x=x, c=c, f=f_small: f({"params": c.params}, x),
            }
            if label is COLD:  # with the floor of a cold call, timed in the same rounds
                candidates["trivial"] = lambda x=x: trivial(x)
                med = cold_medians(candidates, rounds=cold, warmup=2)
                floors.append(f"{s:.0%}: {med['trivial'] * 1e3:.3f} ms")
            else:
                med = interleaved_medians(candidates, rounds=rounds, warmup=2)
            med = {k: v / per_call for k, v in med.items()}  # seconds per request
            rows.append(
                [
                    f"{s:.0%}",
                    label,
                    "-".join(str(w) for w in (784, *c.widths, 10)),
                    f"{med['dense'] * 1e3:.3f}",
                    f"{med['on_the_fly'] * 1e3:.3f}",
                    f"{med['compact'] * 1e3:.3f}",
                    f"{med['dense'] / med['compact']:.2f}x",
                    f"{med['on_the_fly'] / med['compact']:.2f}x",
                    f"{err:.1e}",
                ]
            )
            print(f"unit sparsity {s:.0%}, batch {rows[-1][1]} done", flush=True)
    header = [
        "unit sparsity",
        "batch",
        "compact widths",
        "masked dense ms",
        "mask on the fly ms",
        "compact ms",
        "speed-up vs dense",
        "vs on the fly",
        "max |diff|",
    ]
    n_weights = sum(a * b for a, b in zip((784, *widths), (*widths, 10), strict=True))
    dims = "-".join(str(w) for w in (784, *widths, 10))
    print(
        f"\nMLP {dims} ({n_weights / 1e6:.2f} M weights), jitted, medians of {rounds} rounds"
        + (f" ({cold} for the cold rows)" if cold else "")
    )
    print(markdown_table(header, rows))
    if cold:
        print(
            "a trivial jitted call (x + 1 on one request), cold, same rounds: " + ", ".join(floors)
        )


def checkpoint_sizes() -> None:
    rng = np.random.default_rng(1)
    shapes = [(784, 512), (512, 512), (512, 10)]
    params = {
        f"Dense_{i}": {
            "kernel": rng.normal(size=s).astype(np.float32),
            "bias": rng.normal(size=s[1]).astype(np.float32),
        }
        for i, s in enumerate(shapes)
    }
    u95 = {
        k: {"kernel": rng.random(v["kernel"].shape) >= 0.95, "bias": True}
        for k, v in params.items()
    }
    nm24 = {
        k: {"kernel": np.asarray(nm_mask(jnp.abs(v["kernel"]), 2, 4, axis=0)), "bias": True}
        for k, v in params.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, "dense"), params)
        checkpointer.save(os.path.join(tmp, "zeros95"), msk.apply(params, u95))
        checkpointer.wait_until_finished()
        sizes = {
            "dense (orbax StandardCheckpointer)": export.checkpoint_bytes(
                os.path.join(tmp, "dense")
            ),
            "95% masked, saved dense (zstd on zeros)": export.checkpoint_bytes(
                os.path.join(tmp, "zeros95")
            ),
            "export.save, no masks (all dense)": export.save(os.path.join(tmp, "d"), params),
            "export.save, 95% unstructured": export.save(os.path.join(tmp, "u95"), params, u95),
            "export.save, 2:4 (input axis)": export.save(os.path.join(tmp, "nm"), params, nm24),
        }
    dense = sizes["dense (orbax StandardCheckpointer)"]
    formats = {
        "95%": {k: v["kernel"].format for k, v in export.to_sparse(params, u95).items()},
        "2:4": {k: v["kernel"].format for k, v in export.to_sparse(params, nm24).items()},
    }
    rows = [[name, f"{b:,}", f"{b / dense:.1%}"] for name, b in sizes.items()]
    n = sum(v.size for layer in params.values() for v in layer.values())
    print(f"\nCheckpoint size on disk, MLP 784-512-512-10 ({n:,} params, random float32)")
    print(markdown_table(["checkpoint", "bytes", "of dense"], rows))
    print(f"kernel formats: {formats}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="1024,1024", help="hidden widths of the timed MLP")
    parser.add_argument("--sparsities", default="0.5,0.75", help="unit sparsities")
    parser.add_argument("--batches", default="256,1")
    parser.add_argument(
        "--serve",
        type=int,
        default=64,
        help="also time batch-1 requests served this many per jitted call (lax.map); 0: off",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=50,
        help="also time batch-1 requests made this many jitted calls back to back; 0: off",
    )
    parser.add_argument(
        "--cold",
        type=int,
        default=100,
        help="also time this many rounds of cold batch-1 calls (cache flushed before each, "
        "order shuffled); 0: off",
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs")
    if not args.skip_timing:
        time_inference(
            tuple(int(w) for w in args.widths.split(",")),
            [float(s) for s in args.sparsities.split(",")],
            [int(b) for b in args.batches.split(",")],
            args.rounds,
            args.serve,
            args.burst,
            args.cold,
        )
    checkpoint_sizes()


if __name__ == "__main__":
    main()
