"""Orbax checkpoints of the whole run state, with fallback past a damaged checkpoint.

The saved pytree is everything the loop carries (params, the wrapped optimizer's state with the
lifecycle, vital signs, controller state, budgets and RNG, the data RNG, the step) plus the
metrics recorded so far, so a resumed run continues bit-for-bit where it stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint could be restored."""


class Checkpointer:
    """A thin wrapper over ``orbax.checkpoint.CheckpointManager``.

    Args:
      directory: where checkpoints live (created if missing).
      max_to_keep: how many recent checkpoints to keep (at least 2, so that a damaged latest
        one can fall back to the previous).
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max(2, max_to_keep), create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` under ``step`` and waits until it is on disk."""
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any | Callable[[int], Any]) -> tuple[int, Any] | None:
        """Restores the newest checkpoint that loads; ``None`` if there is none at all.

        A checkpoint that fails to load is reported (logged with its step and the error), moved
        aside to ``<step>.damaged``, and the previous one is tried.

        Args:
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of the
            state) giving the structure, shapes and dtypes to restore into, or a function of
            the step returning it (a run whose shapes change, e.g. by lysis).

        Raises:
          CheckpointError: checkpoints exist but none of them could be restored.
        """
        steps = self.steps()
        if not steps:
            return None
        errors, structure_changed = [], False
        for step in reversed(steps):
            abstract = abstract_state(step) if callable(abstract_state) else abstract_state
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # any failure means "damaged": try the previous one
                logging.warning(
                    "checkpoint %d in %s is damaged or incompatible (%s: %s); trying the previous",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
                errors.append(f"step {step}: {type(e).__name__}")
                structure_changed |= "tree structures do not match" in str(e)
                self._quarantine(step)
                continue
            _check_shapes(state, abstract, step)
            return step, state
        hint = ""
        if structure_changed:
            hint = (
                ". Their state's structure differs from this run's: checkpoints written by an "
                "older emrakul (e.g. before Knobs.lysed/kept) or another config do not restore; "
                "they were moved aside as <step>.damaged, use a new workdir"
            )
        raise CheckpointError(
            f"no checkpoint in {self.directory} could be restored ({'; '.join(errors)}){hint}"
        )

    def _quarantine(self, step: int) -> None:
        """Moves a damaged checkpoint aside (kept for inspection, never silently deleted)."""
        path = os.path.join(self.directory, str(step))
        if os.path.exists(path):
            target = f"{path}.damaged"
            suffix = 0
            while os.path.exists(target):
                suffix += 1
                target = f"{path}.damaged{suffix}"
            os.rename(path, target)
            logging.warning("moved damaged checkpoint %d to %s", step, target)
        self.manager.reload()


def _check_shapes(state: Any, abstract_state: Any, step: int) -> None:
    got = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract_state)
    if got != want:
        raise CheckpointError(f"checkpoint {step} does not match the run's state shapes")
