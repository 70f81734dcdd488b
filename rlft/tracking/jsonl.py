"""``metrics.jsonl`` and ``samples.jsonl`` in the run directory: one JSON object per line."""

from __future__ import annotations

import json
import math
import numbers
import warnings
from pathlib import Path
from typing import Any, TextIO


def _jsonable(value: Any) -> Any:
    """Plain ``int``/``float`` for any number (numpy scalars included); non-finite floats become
    ``None`` since JSON has no NaN or infinity. Other values pass through unchanged."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


class JsonlTracker:
    """Appends each step's metrics to ``run_dir/metrics.jsonl`` and sample rows to
    ``run_dir/samples.jsonl``, flushing every line so that a crash loses nothing already logged.

    Files are opened for appending, so a resumed run continues the same files (the trainer first
    drops the lines of steps it is about to redo).
    """

    def __init__(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self._metrics_file = _open_for_append(self.metrics_path)
        self._samples_file = _open_for_append(self.samples_path)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Write ``{"step": step, **metrics}`` as one line."""
        row = {"step": step, **{key: _jsonable(value) for key, value in metrics.items()}}
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Write each row as one line, with ``step`` added in front."""
        for row in rows:
            line = {"step": step, **{key: _jsonable(value) for key, value in row.items()}}
            self._samples_file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._samples_file.flush()

    def close(self) -> None:
        """Close both files."""
        self._metrics_file.close()
        self._samples_file.close()


def _open_for_append(path: Path) -> TextIO:
    """Open ``path`` for appending, first ending a line that a crash may have cut short, so the
    next object starts on a line of its own."""
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as existing:
            existing.seek(-1, 2)
            cut_short = existing.read(1) != b"\n"
    else:
        cut_short = False
    file = path.open("a", encoding="utf-8")
    if cut_short:
        file.write("\n")
    return file


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file into one dict per step, sorted by step.

    A step that appears more than once (logged, then redone after a resume) keeps its last row.
    A line that is not valid JSON (cut short by a crash) is skipped with a warning.
    """
    by_step: dict[int, dict[str, Any]] = {}
    with Path(path).open(encoding="utf-8") as file:
        for lineno, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{lineno}: skipping a line that is not valid JSON", stacklevel=2)
                continue
            by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]
