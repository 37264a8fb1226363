"""Config validation for the compiled loop: fail before compilation, naming the field.

The fields themselves are documented in ``experiments/configs/default.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from emrakul import controllers as ctl
from emrakul.masks import native
from emrakul.masks.structures import NM, Structure, Units, Unstructured

STRUCTURES = ("unstructured", "nm:N:M", "units")
GROUPS = "groups"  # dependency groups of the host (emrakul.export.group_pruning): loop only
DISTRIBUTIONS = ("uniform", "erk")
HOSTS = ("mlp", "cnn")


def structure_from_config(spec: str) -> Structure:
    """``"unstructured"``, ``"units"`` (output units/channels) or ``"nm:N:M"`` (e.g. ``nm:2:4``,
    groups along the input axis of a kernel, i.e. axis -2)."""
    if not isinstance(spec, str):
        raise ValueError(f"prune.structure must be a string like {STRUCTURES}, got {spec!r}")
    s = spec.strip().lower()
    if s == "unstructured":
        return Unstructured()
    if s == "units":
        return Units(-1)
    if s.startswith("nm:"):
        parts = s.split(":")
        try:
            n, m = int(parts[1]), int(parts[2])
        except (IndexError, ValueError) as e:
            raise ValueError(f"prune.structure '{spec}': expected nm:N:M, e.g. nm:2:4") from e
        if len(parts) != 3 or not 0 <= n <= m or m < 1:
            raise ValueError(f"prune.structure '{spec}': need 0 <= N <= M, M >= 1")
        return NM(n, m, -2)
    raise ValueError(f"prune.structure: unknown structure '{spec}'; use one of {STRUCTURES}")


def _need(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config.{field}: {msg}")


def validate(config: ml_collections.ConfigDict, controllers: Sequence[str] | None = None) -> None:
    """Raises ``ValueError`` naming the first invalid field of ``config``."""
    names = list(controllers) if controllers is not None else [config.controller]
    for name in names:
        _need(ctl.known(name), "controller", f"unknown controller '{name}'; use {ctl.NAMES} "
              "or 'pruner+remedy'")  # fmt: skip
    p = config.prune
    _need(0.0 <= float(p.sparsity) < 1.0, "prune.sparsity", f"must lie in [0, 1), got {p.sparsity}")
    _need(
        p.distribution in DISTRIBUTIONS,
        "prune.distribution",
        f"unknown distribution '{p.distribution}'; use {DISTRIBUTIONS}",
    )
    groups = isinstance(p.structure, str) and p.structure.strip().lower() == GROUPS
    structure = Unstructured() if groups else structure_from_config(p.structure)
    if isinstance(structure, NM) and structure.n is not None:
        implied = 1.0 - structure.n / structure.m
        _need(
            abs(implied - float(p.sparsity)) < 1e-6,
            "prune.sparsity",
            f"prune.structure '{p.structure}' fixes the sparsity at {implied:g} but "
            f"prune.sparsity is {p.sparsity}; set prune.sparsity={implied:g}",
        )
    _need(int(p.every) >= 1, "prune.every", f"the surgery interval must be >= 1, got {p.every}")
    _need(int(p.cooldown) >= 0, "prune.cooldown", f"must be >= 0, got {p.cooldown}")
    _need(0.0 < float(p.vitals_decay) < 1.0, "prune.vitals_decay", "must lie in (0, 1)")
    _need(int(p.get("vitals_every", 1)) >= 1, "prune.vitals_every", "must be >= 1 host step")
    a = p.anesthesia
    _need(0.0 < float(a.depth) <= 1.0, "prune.anesthesia.depth", "must lie in (0, 1]")
    _need(0.0 <= float(a.recovery) <= 1.0, "prune.anesthesia.recovery", "must lie in [0, 1]")
    t = config.train
    _need(int(t.steps) >= int(p.every), "train.steps", "must be at least one surgery interval")
    _need(int(t.batch_size) >= 1, "train.batch_size", "must be >= 1")
    _need(float(t.lr) > 0, "train.lr", "must be > 0")
    _need(config.host.kind in HOSTS, "host.kind", f"unknown host '{config.host.kind}'; {HOSTS}")
    _need(len(tuple(config.host.width)) >= 1, "host.width", "needs at least one hidden width")
    _need(int(config.data.num_samples) >= 100, "data.num_samples", "must be >= 100")
    _need(0.0 < float(config.data.val) < 0.5, "data.val", "must lie in (0, 0.5)")
    for field in ("extra_val", "extra_test", "monitor"):
        _need(int(config.data.get(field, 0)) >= 0, f"data.{field}", "must be >= 0")
    _validate_lysis(config, groups)


def _validate_lysis(config: ml_collections.ConfigDict, groups: bool) -> None:
    lysis = config.get("lysis", {})
    every, multiple_of = lysis.get("every", 0), lysis.get("multiple_of", 8)
    for field, value, low in (("every", every, 0), ("multiple_of", multiple_of, 1)):
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= low
        _need(ok, f"lysis.{field}", f"must be an int >= {low}, got {value!r}")
    _need(every == 0 or groups, "lysis.every",
          f"lysis removes dependency groups: set prune.structure='{GROUPS}' (got "
          f"{config.prune.structure!r})")  # fmt: skip


def apply_runtime_options(config: ml_collections.ConfigDict) -> None:
    """Process-wide switches a config asks for: ``run.native_topk`` (default ``False``) turns on
    the optional native CPU kernel of :func:`emrakul.masks.topk_mask`
    (:func:`emrakul.masks.native.enable`); ``False`` leaves the current setting alone.

    Raises:
      RuntimeError: ``run.native_topk`` is set but the kernel cannot be built (no compiler, or
        the compilation failed; the message says which).
    """
    if bool(config.get("run", {}).get("native_topk", False)):
        native.enable(strict=True)


def check_structure_fits(params_shapes, structure: Structure, filter_fn=None) -> None:
    """Raises ``ValueError`` (field ``prune.structure``) if an N:M group does not divide a layer."""
    from emrakul._tree import default_filter, path_str

    if not isinstance(structure, NM):
        return
    filter_fn = filter_fn or default_filter
    for path, leaf in jax.tree_util.tree_flatten_with_path(params_shapes)[0]:
        if not filter_fn(path, leaf):
            continue
        length = np.shape(leaf)[structure.axis]
        _need(
            length % structure.m == 0,
            "prune.structure",
            f"N:M with M={structure.m} does not divide layer '{path_str(path)}' "
            f"(length {length} along axis {structure.axis})",
        )
