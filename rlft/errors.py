"""The errors that end a run with a one-line message from ``rlft`` instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class SetupError(RuntimeError):
    """Bad input found before the run started (a path, a column, a reward function, a run
    directory in use); ``rlft`` prints it and exits with code 2."""


class RunFailed(RuntimeError):
    """The run stopped on purpose, for a reason its message names (e.g. a reward function that
    failed on every sample for ``reward.max_failed_steps`` steps); ``rlft`` prints it and exits 1."""


class Interrupted(Exception):
    """The run was interrupted (Ctrl-C) after ``step`` completed steps; ``checkpoint`` is the newest
    checkpoint it can resume from (None: it starts afresh)."""

    def __init__(self, step: int, max_steps: int, run_dir: Path, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted after step {step} of {max_steps}")
        self.step, self.max_steps, self.run_dir, self.checkpoint = step, max_steps, run_dir, checkpoint
