"""The paired evaluation: arm specs, host presets, best heuristic on validation, paired diffs."""

import math

import numpy as np
import pytest

from emrakul.lab.sweeps import paired, paired_report
from experiments.configs.default import get_config


def test_parse_arm():
    assert paired.parse_arm("gmp:erk") == paired.Arm("gmp:erk", "gmp", "erk")
    assert paired.parse_arm("breathing") == paired.Arm("breathing:uniform", "breathing", "uniform")
    assert paired.parse_arm("dense") == paired.Arm("dense", "dense", "uniform")
    assert paired.parse_arm("ceil=planned:erk") == paired.Arm("ceil", "planned", "erk")
    for bad in ("", "gmp:nope", "x=:erk"):
        with pytest.raises(ValueError, match="arm"):
            paired.parse_arm(bad)


def test_host_config_and_cell_config():
    base = get_config()
    c = paired.host_config(base, "default")
    assert tuple(c.host.width) == (256, 256) and c.train.steps == 3000
    assert (c.data.extra_val, c.data.extra_test, c.data.monitor) == (2000, 4000, 400)
    assert base.data.extra_val == 0  # the base is not modified
    with pytest.raises(ValueError, match="unknown host"):
        paired.host_config(base, "nope")
    base.controllers["ceil"] = {"plan": "/x.npz"}
    cell = paired.Cell("meta", 0.95, paired.parse_arm("ceil=planned:erk"))
    cfg = paired.cell_config(base, cell)
    assert cfg.controllers.planned.plan == "/x.npz"
    assert (cfg.prune.sparsity, cfg.prune.distribution) == (0.95, "erk")
    assert cell.name == "meta_0.95_ceil"


def rows(arm, vals, tests, host="meta", sp=0.95):
    pairs = enumerate(zip(vals, tests, strict=True))
    return [{"host": host, "sparsity": sp, "arm": arm, "seed": 1000 + i, "val_accuracy": v,
             "test_accuracy": t} for i, (v, t) in pairs]  # fmt: skip


def test_best_heuristic_is_chosen_on_validation_and_differences_are_paired():
    data = (rows("gmp:erk", [0.50, 0.52, 0.51], [0.60, 0.40, 0.50])  # best on val
            + rows("breathing:erk", [0.49, 0.49, 0.49], [0.70, 0.70, 0.70])  # best on test
            + rows("learned", [0.60, 0.60, 0.60], [0.61, 0.42, 0.53]))  # fmt: skip
    ((key, (best, comps)),) = paired_report.summary(data).items()
    assert key == ("meta", 0.95) and best == "gmp:erk"
    by = {c.arm: c for c in comps}
    d = [0.01, 0.02, 0.03]
    assert by["learned"].diff[0] == pytest.approx(np.mean(d))
    half = 4.303 * np.std(d, ddof=1) / math.sqrt(3)
    assert by["learned"].diff[1] == pytest.approx(half)
    assert by["learned"].wins == 3 and by["breathing:erk"].wins == 3
    assert math.isnan(by["gmp:erk"].diff[0])
    md = paired_report.markdown(data)
    assert "best heuristic on validation: gmp:erk" in md and "gmp:erk (best)" in md


def test_learned_arms_are_not_heuristics():
    assert paired_report.is_heuristic("rigl:uniform")
    assert not paired_report.is_heuristic("magistrate:erk")
    assert not paired_report.is_heuristic("ceiling")
    assert paired_report.best_heuristic({"learned": rows("learned", [1.0], [1.0])}) is None


def test_trace_takes_labels_of_the_arms_and_refuses_heuristics():
    from experiments.evaluate import trace_specs

    arms = ["gmp:erk", "learned=magistrate:erk", "ceiling=planned:erk"]
    assert trace_specs(["learned", "ceiling"], arms) == arms[1:]
    assert trace_specs(["x=magistrate:erk"], arms) == ["x=magistrate:erk"]
    with pytest.raises(ValueError, match="not a magistrate or planned arm"):
        trace_specs(["gmp:erk"], arms)
    with pytest.raises(ValueError, match="not a magistrate or planned arm"):
        trace_specs(["learned"], ["gmp:erk"])
