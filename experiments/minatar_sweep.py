"""The resumable MinAtar sweep: DQN on gymnax MinAtar games, pruned while it learns (issue 5).

    python -m experiments.minatar_sweep --workdir DIR [--config experiments/configs/minatar.py]
        [--config.games=Breakout-MinAtar --config.arms=dense,gmp --config.widths=1 ...]
    python -m experiments.minatar_sweep --workdir DIR --report_only

A *cell* is one game x arm x sparsity x width (fields: ``experiments/configs/minatar.py``).
Its seeds are vmapped in one compiled program, ``jax.jit(jax.vmap(dqn.run))``, driven in chunks
of ``config.chunk`` surgery intervals; after each chunk a progress line is printed (intervals,
environment steps, mean return of the episodes of the chunk, sparsity, elapsed time, ETA) and
the vmapped state is checkpointed with orbax (``DIR/checkpoints/<cell>``), so an interrupted
cell resumes from its last chunk. A finished cell appends one JSON line per seed to
``DIR/results.jsonl`` and its checkpoints are deleted; finished cells are skipped on the next
invocation (a cell with only some of the requested seeds runs the missing ones), so a sweep
can be interrupted at any time and spread over several sessions with the ``games`` / ``arms``
/ ``widths`` / ``sparsities`` strings. A lock file per running cell (``DIR/locks``) keeps
concurrent sessions on one ``DIR`` from running the same cell.

A ``results.jsonl`` row: ``game, arm, controller, pooling, sparsity`` (0 for dense arms),
``width, seed, env_steps`` (taken), ``total_env_steps`` (configured), ``updates,
final_return`` (mean return of the training episodes that ended in the last ``final_fraction``
of the surgery intervals), ``final_episodes, final_sparsity, wall_seconds`` (the cell's wall
time, all seeds together, compilation included), ``cell_seeds`` and ``curve`` (per surgery
interval: ``env_steps, mean_return`` (null when no episode ended), ``episodes, loss,
sparsity``).

The report (written after every finished cell, and alone with ``--report_only``):
``DIR/summary.md`` (per game, the final return of every arm x width x sparsity, mean ± 95%
Student-t CI; the interquartile mean over runs x games of the return normalised by the mean
return of dense at width 1 on the same game, with a 95% stratified-bootstrap CI, for the groups
that have every game done), ``DIR/summary.json`` and ``DIR/curves_<game>.png`` (mean return
against environment steps, a 95% CI band over seeds).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import gymnax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from emrakul import controllers as ctl
from emrakul.lab.hosts import dqn
from emrakul.lab.hosts.rl_nets import POOLINGS
from emrakul.lab.rl_cell import (  # noqa: F401
    CellRun,
    NonFiniteLossError,
    _clock,
    build_program,
    chunk_size,
    run_cell,
)
from emrakul.lab.stats import mean_ci, stratified_bootstrap_ci

GAP = "_gap"  # arm suffix: the same controller on the global-average-pooling network
MAGISTRATE_PREFIX = "magistrate_"  # arm magistrate_NAME: the policy named NAME
BASELINE_ARM, BASELINE_WIDTH = "dense", 1  # the normalising baseline
RESULTS = "results.jsonl"
LOCKED_FIELDS = ("dqn", "pooling", "final_fraction")  # must not change within one DIR
BOOTSTRAP_REPS = 2000
X = "\u00d7"  # the multiplication sign of the report (dense \u00d71)

# ---------------------------------------------------------------------------------------------
# The plan: config -> cells


class Cell(NamedTuple):
    """One game x arm x sparsity x width (sparsity 0 for dense arms)."""

    game: str
    arm: str
    sparsity: float
    width: int

    @property
    def controller(self) -> str:
        """The controller name (the arm without the ``_gap`` suffix; ``magistrate_NAME`` arms
        are the ``magistrate`` controller with the policy named NAME)."""
        base = self.arm.removesuffix(GAP)
        return "magistrate" if base.startswith(MAGISTRATE_PREFIX) else base

    @property
    def name(self) -> str:
        """A file-name-safe label."""
        return f"{self.game}_{self.arm}_s{self.sparsity:g}_w{self.width}"

    def label(self) -> str:
        """A human-readable label."""
        sp = "" if self.controller == "dense" else f" @{self.sparsity:g}"
        return f"{self.game} {self.arm} x{self.width}{sp}"


class Plan(NamedTuple):
    """A validated sweep config."""

    cells: list[Cell]
    skipped: list[str]  # messages for arms / cells left out
    seeds: list[int]
    base: dqn.DQNConfig  # env_name, width, pooling, controller and sparsity set per cell
    pooling: str
    chunk: int
    final_fraction: float
    policy: str
    drop_features: tuple[str, ...]
    policies: dict[str, str] = {}  # noqa: RUF012  arm base name -> policy path

    def policy_of(self, cell: Cell) -> str:
        """The policy path a magistrate cell deploys."""
        return self.policies.get(cell.arm.removesuffix(GAP), self.policy)


def _split(config: ml_collections.ConfigDict, field: str) -> list[str]:
    value = config[field]
    if isinstance(value, list | tuple):
        items = [str(v).strip() for v in value]
    elif isinstance(value, str | int | float):
        items = [v.strip() for v in str(value).split(",")]
    else:
        raise ValueError(f"config.{field} must be a comma-separated string, got {value!r}")
    items = [v for v in items if v]
    if not items:
        raise ValueError(f"config.{field} is empty")
    if len(set(items)) != len(items):
        raise ValueError(f"config.{field}={value!r} repeats an entry")
    return items


def _positive_int(config: ml_collections.ConfigDict, field: str, minimum: int = 1) -> int:
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"config.{field} must be an int >= {minimum}, got {value!r}")
    return int(value)


def base_dqn_config(config: ml_collections.ConfigDict) -> dqn.DQNConfig:
    """The :class:`DQNConfig` of ``config.dqn`` (unknown or per-cell fields are refused)."""
    per_cell = {"env_name", "width", "pooling", "controller", "sparsity"}
    fields = dict(config.dqn)
    for name in fields:
        if name in per_cell:
            raise ValueError(
                f"config.dqn.{name} is set per cell (games / widths / pooling / arms / "
                "sparsities); remove it from config.dqn"
            )
        if name not in dqn.DQNConfig._fields:
            raise ValueError(
                f"config.dqn.{name} is not a DQNConfig field ({dqn.DQNConfig._fields})"
            )
    if "mlp_hidden" in fields:
        fields["mlp_hidden"] = tuple(fields["mlp_hidden"])
    return dqn.DQNConfig(**fields)


def cell_config(plan: Plan, cell: Cell) -> dqn.DQNConfig:
    """The DQN config of one cell."""
    return plan.base._replace(
        env_name=cell.game,
        width=cell.width,
        pooling="gap" if cell.arm.endswith(GAP) else plan.pooling,
        controller=cell.controller,
        sparsity=cell.sparsity,
    )


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    """Validates ``config`` and lists its cells (dense arms once per width, with sparsity 0).

    Raises:
      ValueError: a bad field, named (``config.games``, ``config.dqn.lr``, ...), or a
        ``magistrate.policy`` that does not exist.
    """
    games = _split(config, "games")
    for game in games:
        if game not in gymnax.registered_envs:
            raise ValueError(f"config.games: {game!r} is not a gymnax environment")
    arms = _split(config, "arms")
    policies = {}
    for item in str(config.magistrate.get("policies", "") or "").split(","):
        if not item.strip():
            continue
        name, sep, path = (part.strip() for part in item.partition("="))
        if not sep or not name.isidentifier() or not path:
            raise ValueError(
                f"config.magistrate.policies: {item.strip()!r} is not NAME=PATH (NAME a word)"
            )
        if not os.path.isdir(path):
            raise ValueError(
                f"config.magistrate.policies: {path!r} is not a directory; pass "
                "experiments.train_agent's WORKDIR/agent"
            )
        policies[MAGISTRATE_PREFIX + name] = path
    for arm in arms:
        base = arm.removesuffix(GAP)
        if base.startswith(MAGISTRATE_PREFIX) and base not in policies:
            raise ValueError(
                f"config.arms: arm {arm!r} needs its policy: "
                f"--config.magistrate.policies={base.removeprefix(MAGISTRATE_PREFIX)}=WORKDIR/agent"
            )
        if base not in ctl.NAMES and base not in policies:
            raise ValueError(
                f"config.arms: unknown arm {arm!r}; an arm is one of {ctl.NAMES} or "
                f"{MAGISTRATE_PREFIX}NAME (a policy of magistrate.policies), optionally "
                f"suffixed {GAP!r}"
            )
    widths = []
    for w in _split(config, "widths"):
        if not w.isdigit() or int(w) < 1:
            raise ValueError(f"config.widths: {w!r} is not a positive int")
        widths.append(int(w))
    sparsities = []
    for s in _split(config, "sparsities"):
        try:
            value = float(s)
        except ValueError:
            value = math.nan
        if not 0.0 <= value < 1.0:
            raise ValueError(f"config.sparsities: {s!r} is not a sparsity in [0, 1)")
        sparsities.append(value)
    seeds = _positive_int(config, "seeds")
    offset = _positive_int(config, "seed_offset", minimum=0)
    chunk = _positive_int(config, "chunk")
    pooling = config.pooling
    if pooling not in POOLINGS:
        raise ValueError(f"config.pooling must be one of {POOLINGS}, got {pooling!r}")
    fraction = config.final_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"config.final_fraction must lie in (0, 1], got {fraction!r}")
    base = base_dqn_config(config)
    policy = str(config.magistrate.policy or "")
    drop = tuple(d.strip() for d in str(config.magistrate.drop_features).split(",") if d.strip())
    skipped, cells = [], []
    if any(a.removesuffix(GAP) == "magistrate" for a in arms):
        if not policy:
            skipped.append(
                "skipping the magistrate arm: no trained policy; set "
                "--config.magistrate.policy=WORKDIR/agent (experiments.train_agent's output)"
            )
            arms = [a for a in arms if a.removesuffix(GAP) != "magistrate"]
        elif not os.path.isdir(policy):
            raise ValueError(
                f"config.magistrate.policy={policy!r} is not a directory; pass "
                "experiments.train_agent's WORKDIR/agent"
            )
    for game in games:
        for width in widths:
            for arm in arms:
                if arm.endswith(GAP) and not dqn.is_minatar(game):
                    skipped.append(f"skipping {arm} on {game}: pooling applies to MinAtar only")
                    continue
                dense = arm.removesuffix(GAP) == "dense"
                for sp in [0.0] if dense else sparsities:
                    cells.append(Cell(game, arm, sp, width))
    plan = Plan(
        cells,
        skipped,
        list(range(offset, offset + seeds)),
        base,
        pooling,
        chunk,
        float(fraction),
        policy,
        drop,
        policies,
    )
    for cell in cells:
        try:
            dqn.validate(cell_config(plan, cell))
        except ValueError as e:
            raise ValueError(f"{e} (config.dqn / cell {cell.label()})") from None
    return plan


def locked_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings one DIR must keep (recorded in ``sweep_config.json``)."""
    out = {}
    for field in LOCKED_FIELDS:
        value = config[field]
        out[field] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return json.loads(json.dumps(out))  # tuples -> lists, as read back


def check_locked(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Records the locked settings on the first run; refuses different ones later.

    Raises:
      ValueError: naming every field that differs from ``DIR/sweep_config.json``.
    """
    path = os.path.join(workdir, "sweep_config.json")
    now = locked_settings(config)
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump({**now, "config": config.to_dict()}, f, indent=2, default=str)
        return
    with open(path) as f:
        saved = json.load(f)
    diffs = []
    for field in LOCKED_FIELDS:
        a, b = saved.get(field), now[field]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"config.{field}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            diffs.append(f"config.{field}: {a!r} -> {b!r}")
    if diffs:
        raise ValueError(
            f"{workdir} holds results of different settings ({'; '.join(diffs)}); use a new "
            f"--workdir or the settings of {path}"
        )


def final_return(return_sum: np.ndarray, episodes: np.ndarray, fraction: float) -> np.ndarray:
    """Per seed, the mean return of the episodes that ended in the last ``fraction`` of the
    intervals (``[..., intervals]`` inputs; NaN where none ended)."""
    k = max(1, round(np.shape(return_sum)[-1] * fraction))
    total = np.asarray(return_sum, np.float64)[..., -k:].sum(-1)
    count = np.asarray(episodes)[..., -k:].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def result_rows(
    cell: Cell, plan: Plan, config: dqn.DQNConfig, seeds: Sequence[int], result: CellRun
) -> list[dict[str, Any]]:
    """The ``results.jsonl`` rows of a finished cell, one per seed."""
    m = result.metrics
    final = final_return(m.return_sum, m.episodes, plan.final_fraction)
    k = max(1, round(m.episodes.shape[-1] * plan.final_fraction))
    rows = []
    for i, seed in enumerate(seeds):
        rows.append(
            {
                "game": cell.game,
                "arm": cell.arm,
                "controller": cell.controller,
                "pooling": config.pooling,
                "sparsity": cell.sparsity,
                "width": cell.width,
                "seed": int(seed),
                "env_steps": int(result.env_steps[i]),
                "total_env_steps": config.total_env_steps,
                "updates": int(result.updates[i]),
                "final_return": _num(final[i]),
                "final_fraction": plan.final_fraction,
                "final_episodes": int(m.episodes[i, -k:].sum()),
                "final_sparsity": float(m.sparsity[i, -1]),
                "wall_seconds": result.seconds,
                "cell_seeds": len(seeds),
                "curve": {
                    "env_steps": [int(v) for v in m.env_steps[i]],
                    "mean_return": [_num(v) for v in m.mean_return[i]],
                    "episodes": [int(v) for v in m.episodes[i]],
                    "loss": [_num(v) for v in m.loss[i]],
                    "sparsity": [float(v) for v in m.sparsity[i]],
                },
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Results file, locks, the sweep


def read_results(workdir: str) -> list[dict[str, Any]]:
    """The rows of ``DIR/results.jsonl`` (a damaged line, e.g. from a kill mid-write, is
    skipped with a warning)."""
    path = os.path.join(workdir, RESULTS)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("%s line %d is damaged; ignored", path, i + 1)
    return rows


def _cell_key(row_or_cell: Any) -> tuple:
    get = row_or_cell.get if isinstance(row_or_cell, dict) else row_or_cell._asdict().get
    return (get("game"), get("arm"), round(float(get("sparsity")), 6), int(get("width")))


def done_seeds(rows: Sequence[dict]) -> dict[tuple, set[int]]:
    """The seeds in ``rows`` per cell key ``(game, arm, sparsity, width)``."""
    out: dict[tuple, set[int]] = {}
    for r in rows:
        out.setdefault(_cell_key(r), set()).add(int(r["seed"]))
    return out


def append_rows(workdir: str, rows: Sequence[dict]) -> None:
    """Appends ``rows`` to ``DIR/results.jsonl`` in one locked write."""
    path = os.path.join(workdir, RESULTS)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a line cut by a kill: start a fresh one
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    text = "\n" + text
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def cell_lock(workdir: str, name: str) -> Iterator[bool]:
    """Yields whether this process holds the cell (False: another live process runs it)."""
    os.makedirs(os.path.join(workdir, "locks"), exist_ok=True)
    path = os.path.join(workdir, "locks", f"{name}.lock")
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    if os.path.exists(path):
        try:
            with open(path) as f:
                owner = json.load(f)
            alive = owner.get("host") == me["host"] and owner.get("pid") != me["pid"]
            if alive:
                os.kill(int(owner["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            alive = False  # stale or unreadable: take it over
        if alive:
            yield False
            return
    with open(path, "w") as f:
        json.dump(me, f)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


class CellStatus(NamedTuple):
    """What the sweep did with one cell."""

    cell: Cell
    status: str  # "done", "skipped" (finished before), "busy" (locked), "interrupted"
    seeds: list[int]  # the seeds this call ran
    resumed_from: int = 0  # intervals restored from a checkpoint


def _seed_label(seeds: Sequence[int]) -> str:
    s = sorted(seeds)
    if s == list(range(s[0], s[-1] + 1)):
        return f"seeds{s[0]}-{s[-1]}"
    return "seeds" + "_".join(map(str, s))


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    progress: bool = True,
    max_chunks: int | None = None,
) -> list[CellStatus]:
    """Runs every unfinished cell of ``config`` into ``workdir``; writes the report after each.

    Args:
      config: a sweep config (``experiments/configs/minatar.py``).
      workdir: the output directory (created if missing).
      progress: print progress lines.
      max_chunks: stop the first unfinished cell after this many chunks of this call and return
        (simulates an interruption; its checkpoint stays for the next call).

    Returns:
      One :class:`CellStatus` per cell of the plan, in order (up to the interrupted one).

    Raises:
      ValueError: a bad config field (named) or settings that differ from the ones ``workdir``
        was started with.
    """
    plan = make_plan(config)
    os.makedirs(workdir, exist_ok=True)
    check_locked(workdir, config)
    for message in plan.skipped:
        print(message, flush=True)
    policy_params: dict[str, Any] = {}
    statuses = []
    for cell in plan.cells:
        with cell_lock(workdir, cell.name) as mine:
            if not mine:
                print(f"skip {cell.label()}: another process is running it", flush=True)
                statuses.append(CellStatus(cell, "busy", []))
                continue
            have = done_seeds(read_results(workdir)).get(_cell_key(cell), set())
            todo = [s for s in plan.seeds if s not in have]
            if not todo:
                if progress:
                    print(f"skip {cell.label()}: seeds {plan.seeds} already in {RESULTS}")
                # a checkpoint left over by a kill between the append and its removal
                shutil.rmtree(
                    os.path.join(workdir, "checkpoints", f"{cell.name}_{_seed_label(plan.seeds)}"),
                    ignore_errors=True,
                )
                statuses.append(CellStatus(cell, "skipped", []))
                continue
            ckpt_dir = os.path.join(workdir, "checkpoints", f"{cell.name}_{_seed_label(todo)}")
            cfg = cell_config(plan, cell)
            controller: str | ctl.Controller = cell.controller
            if cell.controller == "magistrate":
                from emrakul.controllers.magistrate import deployed, load_policy

                path = plan.policy_of(cell)
                if path not in policy_params:
                    policy_params[path] = load_policy(path)
                controller = deployed(
                    policy_params[path],
                    start=cfg.prune_start,
                    end=cfg.prune_end,
                    drop_features=plan.drop_features,
                )
            program = build_program(cfg, controller)
            if progress:
                print(
                    f"run {cell.label()}: seeds {todo}, {program.num_intervals} intervals",
                    flush=True,
                )
            result = run_cell(
                program,
                todo,
                checkpoint_dir=ckpt_dir,
                chunk=plan.chunk,
                label=cell.label(),
                progress=progress,
                max_chunks=max_chunks,
            )
            if result is None:
                statuses.append(CellStatus(cell, "interrupted", todo))
                return statuses
            append_rows(workdir, result_rows(cell, plan, cfg, todo, result))
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            statuses.append(CellStatus(cell, "done", todo, result.resumed_from))
        write_report(workdir, _split(config, "games"))
    return statuses


# ---------------------------------------------------------------------------------------------
# Report


def _group_key(r: dict) -> tuple[str, int, float]:
    return (r["arm"], int(r["width"]), round(float(r["sparsity"]), 6))


def _group_label(key: tuple[str, int, float]) -> str:
    arm, width, sp = key
    return f"{arm} {X}{width}" + ("" if arm.removesuffix(GAP) == "dense" else f" @{sp:g}")


def _order(games: Sequence[str] | None, rows: Sequence[dict]) -> list[str]:
    present = list(dict.fromkeys(r["game"] for r in rows))
    first = [g for g in (games or []) if g in present]
    return first + [g for g in present if g not in first]


class Normalised(NamedTuple):
    """Normalised scores per group."""

    games: list[str]  # the games with a usable dense ×1 baseline
    baselines: dict[str, float]  # game -> mean dense ×1 final return
    unusable: dict[str, str]  # game -> why it has no usable baseline
    scores: dict[tuple, np.ndarray]  # complete groups -> [runs, games]
    incomplete: dict[tuple, list[str]]  # group -> the games it lacks ([]: no baseline at all)


def normalised_scores(rows: Sequence[dict], games: Sequence[str] | None = None) -> Normalised:
    """Final returns divided by the mean final return of dense ×1 on the same game.

    A group (arm, width, sparsity) is complete when it has runs of every game that has a usable
    baseline (some dense ×1 runs with a positive mean); its runs are the seeds it has on all of
    them, giving a ``[runs, games]`` array for :func:`stratified_bootstrap_ci`.
    """
    rows = [r for r in rows if r.get("final_return") is not None]
    order = _order(games, rows)
    baselines, unusable = {}, {}
    for g in order:
        base = [
            r["final_return"]
            for r in rows
            if r["game"] == g and (r["arm"], int(r["width"])) == (BASELINE_ARM, BASELINE_WIDTH)
        ]
        if not base:
            unusable[g] = f"no {BASELINE_ARM} {X}{BASELINE_WIDTH} runs yet"
        elif np.mean(base) <= 0:
            unusable[g] = f"{BASELINE_ARM} {X}{BASELINE_WIDTH} mean return {np.mean(base):.3g} <= 0"
        else:
            baselines[g] = float(np.mean(base))
    # sorted, not in display order: the bootstrap resamples game by game, so its CI must not
    # depend on which invocation (with which --config.games) writes the report
    usable = sorted(g for g in order if g in baselines)
    by_group: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in rows:
        by_group.setdefault(_group_key(r), {}).setdefault(r["game"], {})[int(r["seed"])] = r[
            "final_return"
        ]
    scores, incomplete = {}, {}
    for key in sorted(by_group, key=lambda k: (k[0].removesuffix(GAP) != "dense", k)):
        per_game = by_group[key]
        missing = [g for g in usable if g not in per_game]
        if missing or not usable:
            incomplete[key] = missing  # empty: no game has a baseline yet
            continue
        seeds = sorted(set.intersection(*(set(per_game[g]) for g in usable)))
        if not seeds:
            incomplete[key] = ["(no seed common to all games)"]
        else:
            scores[key] = np.asarray(
                [[per_game[g][s] / baselines[g] for g in usable] for s in seeds], np.float64
            )
    return Normalised(usable, baselines, unusable, scores, incomplete)


def _fmt(m: float, ci: float, digits: int = 2) -> str:
    if not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{m:.{digits}f}"


def summary_markdown(rows: Sequence[dict], games: Sequence[str] | None = None) -> tuple[str, dict]:
    """The ``summary.md`` text and the ``summary.json`` content."""
    order = _order(games, rows)
    steps = sorted({int(r["env_steps"]) for r in rows})
    totals = sorted({int(r["total_env_steps"]) for r in rows})
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["game"], *_group_key(r)), []).append(r)
    seeds = sorted({len(v) for v in cells.values()})
    fractions = sorted({float(r.get("final_fraction", 0.1)) for r in rows})
    lines = [
        "# MinAtar sweep: DQN pruned while it learns",
        "",
        f"Environment steps per run: {', '.join(f'{s:,}' for s in steps)} "
        f"(configured total_env_steps {', '.join(f'{t:,}' for t in totals)}, rounded down to "
        f"whole surgery intervals). Seeds per cell: {', '.join(map(str, seeds))}. "
        "Final return: mean return of the training episodes (ε-greedy) that ended in the last "
        f"{', '.join(f'{100 * f:g}%' for f in fractions)} of the surgery intervals "
        "(config.final_fraction).",
        "",
        "## Final return per game (mean ± 95% CI, Student t over seeds)",
    ]
    out: dict[str, Any] = {"env_steps": steps, "seeds": seeds, "games": {}, "normalised": {}}
    for g in order:
        lines += [
            "",
            f"### {g}",
            "",
            "| arm | width | sparsity | seeds | final return | final sparsity | wall time (cell) |",
            "|---|---|---|---|---|---|---|",
        ]
        keys = sorted(
            (k for k in cells if k[0] == g),
            key=lambda k: (k[1].removesuffix(GAP) != "dense", k[1], k[2], k[3]),
        )
        out["games"][g] = []
        for k in keys:
            rs = cells[k]
            vals = [r["final_return"] for r in rs if r["final_return"] is not None]
            m, ci = mean_ci(vals)
            sp = max(0.0, float(np.mean([r["final_sparsity"] for r in rs])))
            wall = max(r["wall_seconds"] for r in rs)
            lines.append(
                f"| {k[1]} | {k[2]} | {k[3]:g} | {len(rs)} | {_fmt(m, ci)} | {sp:.3f} | "
                f"{_clock(wall)} |"
            )
            out["games"][g].append(
                {
                    "arm": k[1],
                    "width": k[2],
                    "sparsity": k[3],
                    "seeds": len(rs),
                    "final_return_mean": m,
                    "final_return_ci95": ci,
                    "final_sparsity": sp,
                    "wall_seconds": wall,
                }
            )
    norm = normalised_scores(rows, order)
    lines += [
        "",
        f"## Normalised score: IQM over runs {X} games (95% stratified-bootstrap CI)",
        "",
        f"Score = final return / mean final return of {BASELINE_ARM} {X}{BASELINE_WIDTH} on the "
        f"same game. Interquartile mean of all runs {X} games, percentile CI of {BOOTSTRAP_REPS} "
        "bootstrap replicates resampling seeds within each game (Agarwal et al. 2021). Only "
        "groups with every game done.",
        "",
        "Games: "
        + (
            ", ".join(f"{g} (dense {X}1: {norm.baselines[g]:.2f})" for g in norm.games)
            or "none yet"
        )
        + ".",
    ]
    for g, why in norm.unusable.items():
        lines.append(f"Not normalisable: {g} ({why}).")
    if norm.scores:
        lines += [
            "",
            f"| arm | width | sparsity | runs {X} games | IQM | 95% CI | mean |",
            "|---|---|---|---|---|---|---|",
        ]
    else:
        lines += ["", "No group has every game done yet."]
    for key, x in norm.scores.items():
        point, lo, hi = stratified_bootstrap_ci(x, reps=BOOTSTRAP_REPS, seed=0)
        arm, width, sp = key
        lines.append(
            f"| {arm} | {width} | {sp:g} | {x.shape[0]} {X} {x.shape[1]} | {point:.3f} | "
            f"[{lo:.3f}, {hi:.3f}] | {x.mean():.3f} |"
        )
        out["normalised"][_group_label(key)] = {
            "iqm": point,
            "ci95": [lo, hi],
            "mean": float(x.mean()),
            "runs": x.shape[0],
        }
    if norm.incomplete:
        nothing = f"(no game has a {BASELINE_ARM} {X}{BASELINE_WIDTH} baseline yet)"
        parts = [
            f"{_group_label(k)} lacks {', '.join(v)}" if v else f"{_group_label(k)} {nothing}"
            for k, v in norm.incomplete.items()
        ]
        lines += ["", "Incomplete (left out of the table): " + "; ".join(parts) + "."]
    out["incomplete"] = {_group_label(k): v for k, v in norm.incomplete.items()}
    out["baselines"] = norm.baselines
    return "\n".join(lines) + "\n", out


def curve_stats(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Env steps, mean over seeds and 95% CI half-width of the per-interval mean return.

    Seeds without a finished episode in an interval (``None``) are left out of that interval's
    mean; intervals where no seed finished one are dropped, so that games with episodes longer
    than an interval (Freeway: 2500 steps) still draw a connected line.
    """
    length = min(len(r["curve"]["env_steps"]) for r in rows)
    x = np.asarray(rows[0]["curve"]["env_steps"][:length])
    y = np.asarray(
        [[np.nan if v is None else v for v in r["curve"]["mean_return"][:length]] for r in rows],
        np.float64,
    ).reshape(len(rows), length)
    keep = np.isfinite(y).any(axis=0)
    stats = [mean_ci(col[np.isfinite(col)]) for col in y[:, keep].T]
    mean = np.asarray([s[0] for s in stats], np.float64)
    ci = np.nan_to_num(np.asarray([s[1] for s in stats], np.float64))
    return x[keep], mean, ci


def plot_curves(rows: Sequence[dict], game: str, path: str) -> None:
    """Mean return against environment steps per arm × width × sparsity, a 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["game"] == game:
            groups.setdefault(_group_key(r), []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    widths = sorted({k[1] for k in groups})
    colours: dict[tuple, Any] = {}
    for key in sorted(groups, key=lambda k: (k[0].removesuffix(GAP) != "dense", k)):
        x, mean, ci = curve_stats(groups[key])
        colour_key = (key[0], key[2])
        line = ax.plot(
            x,
            mean,
            styles[widths.index(key[1]) % len(styles)],
            color=colours.get(colour_key),
            label=_group_label(key),
            lw=1.3,
        )[0]
        colours[colour_key] = line.get_color()
        ax.fill_between(x, mean - ci, mean + ci, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_title(f"{game} (DQN, mean ± 95% CI over seeds)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training return per surgery interval")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(workdir: str, games: Sequence[str] | None = None) -> str:
    """Writes ``summary.md``, ``summary.json`` and ``curves_<game>.png`` from
    ``DIR/results.jsonl``; returns the markdown."""
    rows = read_results(workdir)
    if not rows:
        text = f"# MinAtar sweep\n\nNo finished cell in {os.path.join(workdir, RESULTS)} yet.\n"
        _atomic_write(os.path.join(workdir, "summary.md"), text)
        return text
    text, data = summary_markdown(rows, games)
    _atomic_write(os.path.join(workdir, "summary.md"), text)
    _atomic_write(os.path.join(workdir, "summary.json"), json.dumps(data, indent=2) + "\n")
    for game in _order(games, rows):
        plot_curves(rows, game, os.path.join(workdir, f"curves_{game}.png"))
    return text


# ---------------------------------------------------------------------------------------------
# Command line


def define_flags(
    flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None
) -> None:
    """Defines ``--config``, ``--workdir`` and ``--report_only``.

    Called only when this module runs as a program, so that importing it defines no global
    flags. ``argv``: the command line whose ``--config.FIELD`` overrides apply (default:
    ``sys.argv``), for a private ``flag_values`` parsed in-process.
    """
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(os.path.dirname(__file__), "configs", "minatar.py"),
        "Sweep config.",
        flag_values=flag_values,
        sys_argv=argv,
    )
    flags.DEFINE_string("workdir", None, "Output directory.", flag_values=flag_values)
    flags.DEFINE_bool(
        "report_only", False, "Only write the report from results.", flag_values=flag_values
    )


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Runs the sweep (or only the report) from the parsed flags."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config, workdir = flag_values.config, flag_values.workdir
    if not workdir:
        sys.exit("error: --workdir is required")
    games = _split(config, "games")
    if flag_values.report_only:
        if not os.path.isdir(workdir):
            sys.exit(f"error: --workdir {workdir} does not exist")
        print(write_report(workdir, games))
        return
    try:
        statuses = run_sweep(config, workdir)
    except ValueError as e:
        sys.exit(f"error: {e}")
    ran = sum(s.status == "done" for s in statuses)
    print(f"{ran} cell(s) run, {sum(s.status == 'skipped' for s in statuses)} already done")
    print(write_report(workdir, games))


if __name__ == "__main__":
    define_flags()
    app.run(main)
