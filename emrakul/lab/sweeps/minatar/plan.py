"""The MinAtar sweep's plan: a validated config and its cells (game x arm x sparsity x width).

Every field of the config is checked here, before anything compiles, and a bad one is named
(``config.games``, ``config.dqn.lr``, ...). The settings a work directory was started with
(:data:`LOCKED_FIELDS`) are recorded in it and refused when they change, so that every row of
one ``results.jsonl`` comes from the same experiment.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, NamedTuple

import gymnax
import ml_collections
import numpy as np

from emrakul import controllers as ctl
from emrakul.lab.hosts import dqn
from emrakul.lab.hosts.rl_nets import POOLINGS

GAP = "_gap"  # arm suffix: the same controller on the global-average-pooling network
MAGISTRATE_PREFIX = "magistrate_"  # arm magistrate_NAME: the policy named NAME
LOCKED_FIELDS = ("dqn", "pooling", "final_fraction")  # must not change within one DIR


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
    policy: str  # empty: the policy shipped in the package
    policies: dict[str, str] = {}  # noqa: RUF012  arm base name -> policy file

    def policy_of(self, cell: Cell) -> str:
        """The policy file a magistrate cell deploys (empty: the policy shipped in the
        package)."""
        return self.policies.get(cell.arm.removesuffix(GAP), self.policy)


def split(config: ml_collections.ConfigDict, field: str) -> list[str]:
    """The entries of a comma-separated config field (ml_collections cannot override a list
    from the command line).

    Raises:
      ValueError: the field is empty, not a string / number / list, or repeats an entry.
    """
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


def _games(config: ml_collections.ConfigDict) -> list[str]:
    games = split(config, "games")
    for game in games:
        if game not in gymnax.registered_envs:
            raise ValueError(f"config.games: {game!r} is not a gymnax environment")
    return games


def _check_policy(field: str, path: str) -> None:
    """Refuses a policy (a file, a shipped policy's name, empty: the shipped classifier policy)
    that is missing or cannot be deployed.

    Raises:
      ValueError: naming ``field``.
    """
    import importlib

    mg = importlib.import_module("emrakul.controllers.magistrate")  # the module, not the factory

    hint = "pass experiments.train_agent's WORKDIR/policy.msgpack"
    path = mg.policy_path(path) if path else ""
    if path and not os.path.isfile(path):
        raise ValueError(f"{field}: {path!r} is not a file; {hint}")
    if not path and not os.path.isfile(mg.SHIPPED):
        raise ValueError(f"{field} is empty and the package ships no policy ({mg.SHIPPED}); {hint}")
    try:
        mg.load_policy(path or mg.SHIPPED)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None


def _policies(config: ml_collections.ConfigDict) -> dict[str, str]:
    """``magistrate.policies`` (``NAME=PATH,...``) as arm name -> policy file."""
    policies = {}
    for item in str(config.magistrate.get("policies", "") or "").split(","):
        if not item.strip():
            continue
        name, sep, path = (part.strip() for part in item.partition("="))
        if not sep or not name.isidentifier() or not path:
            raise ValueError(
                f"config.magistrate.policies: {item.strip()!r} is not NAME=PATH (NAME a word)"
            )
        _check_policy("config.magistrate.policies", path)
        policies[MAGISTRATE_PREFIX + name] = path
    return policies


def _arms(config: ml_collections.ConfigDict, policies: dict[str, str]) -> list[str]:
    arms = split(config, "arms")
    for arm in arms:
        base = arm.removesuffix(GAP)
        if base.startswith(MAGISTRATE_PREFIX) and base not in policies:
            raise ValueError(
                f"config.arms: arm {arm!r} needs its policy: "
                f"--config.magistrate.policies={base.removeprefix(MAGISTRATE_PREFIX)}"
                "=WORKDIR/policy.msgpack"
            )
        if base not in ctl.NAMES and base not in policies:
            raise ValueError(
                f"config.arms: unknown arm {arm!r}; an arm is one of {ctl.NAMES} or "
                f"{MAGISTRATE_PREFIX}NAME (a policy of magistrate.policies), optionally "
                f"suffixed {GAP!r}"
            )
    return arms


def _widths_and_sparsities(config: ml_collections.ConfigDict) -> tuple[list[int], list[float]]:
    widths = []
    for w in split(config, "widths"):
        if not w.isdigit() or int(w) < 1:
            raise ValueError(f"config.widths: {w!r} is not a positive int")
        widths.append(int(w))
    sparsities = []
    for s in split(config, "sparsities"):
        try:
            value = float(s)
        except ValueError:
            value = math.nan
        if not 0.0 <= value < 1.0:
            raise ValueError(f"config.sparsities: {s!r} is not a sparsity in [0, 1)")
        sparsities.append(value)
    return widths, sparsities


def _scalars(config: ml_collections.ConfigDict) -> tuple[list[int], int, str, float]:
    """Seeds, chunk, pooling and final fraction, validated."""
    seeds = _positive_int(config, "seeds")
    offset = _positive_int(config, "seed_offset", minimum=0)
    chunk = _positive_int(config, "chunk")
    pooling = config.pooling
    if pooling not in POOLINGS:
        raise ValueError(f"config.pooling must be one of {POOLINGS}, got {pooling!r}")
    fraction = config.final_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"config.final_fraction must lie in (0, 1], got {fraction!r}")
    return list(range(offset, offset + seeds)), chunk, pooling, float(fraction)


def _magistrate_policy(arms: list[str], policy: str) -> None:
    """Checks ``magistrate.policy`` (empty: the shipped policy) when a ``magistrate`` arm runs."""
    if any(a.removesuffix(GAP) == "magistrate" for a in arms):
        _check_policy("config.magistrate.policy", policy)


def _cells(
    games: list[str], widths: list[int], arms: list[str], sparsities: list[float], skipped: list
) -> list[Cell]:
    cells = []
    for game in games:
        for width in widths:
            for arm in arms:
                if arm.endswith(GAP) and not dqn.is_minatar(game):
                    skipped.append(f"skipping {arm} on {game}: pooling applies to MinAtar only")
                    continue
                dense = arm.removesuffix(GAP) == "dense"
                for sp in [0.0] if dense else sparsities:
                    cells.append(Cell(game, arm, sp, width))
    return cells


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    """Validates ``config`` and lists its cells (dense arms once per width, with sparsity 0).

    Raises:
      ValueError: a bad field, named (``config.games``, ``config.dqn.lr``, ...), or a
        ``magistrate.policy`` / ``magistrate.policies`` file that is missing or not a
        Magistrate policy of this version (an empty ``magistrate.policy`` is the policy shipped
        in the package, checked only when a ``magistrate`` arm runs).
    """
    games = _games(config)
    policies = _policies(config)
    arms = _arms(config, policies)
    widths, sparsities = _widths_and_sparsities(config)
    seeds, chunk, pooling, fraction = _scalars(config)
    base = base_dqn_config(config)
    policy = str(config.magistrate.policy or "")
    _magistrate_policy(arms, policy)
    skipped: list[str] = []
    cells = _cells(games, widths, arms, sparsities, skipped)
    plan = Plan(cells, skipped, seeds, base, pooling, chunk, fraction, policy, policies)
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
