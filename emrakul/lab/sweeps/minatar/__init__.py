"""The resumable MinAtar sweep: DQN on gymnax MinAtar games, pruned while it learns.

A *cell* is one game x arm x sparsity x width (fields: ``experiments/configs/minatar.py``).
Its seeds are vmapped in one compiled program driven in checkpointed chunks
(:func:`emrakul.lab.rl_cell.run_cell`), so an interrupted cell resumes from its last chunk; a
finished cell appends one row per seed to ``DIR/results.jsonl`` on the shared grid
(:mod:`emrakul.lab.grid`), and finished cells are skipped on the next invocation (a cell with
only some of the requested seeds runs the missing ones). A lock file per running cell keeps
concurrent sessions on one ``DIR`` from running the same cell.

* :mod:`~emrakul.lab.sweeps.minatar.plan`: config -> validated cells.
* :mod:`~emrakul.lab.sweeps.minatar.run`: the sweep on the grid, the rows of a finished cell.
* :mod:`~emrakul.lab.sweeps.minatar.summary`: tables, normalised IQM, curves, profiles.
"""

from emrakul.lab.sweeps.minatar.plan import (
    GAP,
    LOCKED_FIELDS,
    MAGISTRATE_PREFIX,
    Cell,
    Plan,
    base_dqn_config,
    cell_config,
    check_locked,
    locked_settings,
    make_plan,
    split,
)
from emrakul.lab.sweeps.minatar.run import (
    RESULTS,
    cell_key,
    final_return,
    read_results,
    result_rows,
    run_sweep,
    sweep_grid,
)
from emrakul.lab.sweeps.minatar.summary import (
    BASELINE_ARM,
    BASELINE_WIDTH,
    BOOTSTRAP_REPS,
    Normalised,
    X,
    curve_stats,
    normalised_scores,
    plot_curves,
    plot_profiles,
    summary_markdown,
    write_report,
)

__all__ = [
    "BASELINE_ARM",
    "BASELINE_WIDTH",
    "BOOTSTRAP_REPS",
    "GAP",
    "LOCKED_FIELDS",
    "MAGISTRATE_PREFIX",
    "RESULTS",
    "Cell",
    "Normalised",
    "Plan",
    "X",
    "base_dqn_config",
    "cell_config",
    "cell_key",
    "check_locked",
    "curve_stats",
    "final_return",
    "locked_settings",
    "make_plan",
    "normalised_scores",
    "plot_curves",
    "plot_profiles",
    "read_results",
    "result_rows",
    "run_sweep",
    "split",
    "summary_markdown",
    "sweep_grid",
    "write_report",
]
