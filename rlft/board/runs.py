"""Reading run directories while they are written: a run's status, its metrics (read
incrementally: each call parses only the lines appended since the last), and its samples by step
(found by binary search over the file's byte offsets, so a step of a 1 GB samples.jsonl costs a
few reads, not a scan).

Status (:func:`run_state`): ``running`` while the process named in status.json (or in a lock file
of the run directory) is alive on this host, or, for a run from another host or one without
either, while its files changed in the last :data:`HEARTBEAT_S` seconds; then ``finished``,
``crashed`` or ``interrupted`` as status.json says (``finished`` too once the last step is
logged; a process that vanished without a word counts as ``crashed``); ``stopped`` for a run
with none of these clues that did not reach its last step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.trainers.run_status import pid_alive, read_status

HEARTBEAT_S = 120.0
"""A run whose files changed this recently counts as running when no live process can be checked."""
LOG_FILE = "train.log"
"""Where a run started by the board writes its output (stdout and stderr)."""
_STEP = re.compile(rb'^\{"step": (\d+)')


def find_runs(root: Path, depth: int = 2) -> list[Path]:
    """Run directories (holding config.yaml or metrics.jsonl) at or below ``root``, at most
    ``depth`` levels down, sorted by path."""
    found = []
    if (root / "config.yaml").is_file() or (root / "metrics.jsonl").is_file():
        found.append(root)
    if depth > 0 and root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and child.name != "checkpoints":
                found += find_runs(child, depth - 1)
    return found


class MetricsFile:
    """metrics.jsonl of one run, re-read incrementally: :meth:`rows` parses only what was appended
    since the last call (and starts over if the file shrank, e.g. a resumed run rewrote it)."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._by_step: dict[int, dict[str, Any]] = {}
        self._rows: list[dict[str, Any]] = []
        self._keys: set[str] = set()

    def rows(self) -> list[dict[str, Any]]:
        """One dict per step, in step order (a step logged twice keeps its last row)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._offset:
            self.__init__(self.path)
        if size > self._offset:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read(size - self._offset)
            end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
            self._offset += end
            resort = False
            for line in chunk[:end].splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int):
                    if self._rows and row["step"] <= self._rows[-1]["step"]:
                        resort = True  # a step logged again: rebuild the order below
                    else:
                        self._rows.append(row)
                    self._by_step[row["step"]] = row
                    self._keys.update(row)
            if resort:
                self._rows = [self._by_step[s] for s in sorted(self._by_step)]
        return self._rows

    def metric_names(self) -> list[str]:
        """Every metric name logged so far (not ``step``), sorted."""
        self.rows()
        return sorted(self._keys - {"step"})


class SamplesFile:
    """samples.jsonl of one run. Its lines are in step order (each starts with ``{"step": N``, and
    a resumed run drops the lines of the steps it redoes), so a step's rows are found by binary
    search over byte offsets."""

    def __init__(self, path: Path):
        self.path = path

    def step_range(self) -> tuple[int, int] | None:
        """The first and last step with samples, or None if there are none yet."""
        try:
            with self.path.open("rb") as file:
                size = file.seek(0, os.SEEK_END)
                first = self._step_after(file, 0)[1]
                last = None
                back = 1 << 16
                while last is None and first is not None:  # the last complete line
                    pos = max(0, size - back)
                    file.seek(pos)
                    lines = file.read(size - pos).split(b"\n")
                    complete = lines[:-1] if pos == 0 else lines[1:-1]
                    steps = [s for s in map(_line_step, complete) if s is not None]
                    last = steps[-1] if steps else None
                    if pos == 0:
                        break
                    back *= 4
        except FileNotFoundError:
            return None
        return None if first is None or last is None else (first, last)

    def rows(self, step: int, limit: int = 64) -> list[dict[str, Any]]:
        """The rows of ``step`` (at most ``limit``)."""
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return []
        with file:
            lo, hi = 0, file.seek(0, os.SEEK_END)
            while lo < hi:  # the first line start at or after `mid` whose step is >= `step`
                mid = (lo + hi) // 2
                found = self._step_after(file, mid)[1]
                if found is None or found >= step:
                    hi = mid
                else:
                    lo = mid + 1
            start = self._step_after(file, lo)[0]
            file.seek(start)
            rows = []
            for line in file:
                if _line_step(line) != step or len(rows) >= limit:
                    break
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line still being written
                    break
            return rows

    @staticmethod
    def _step_after(file: Any, pos: int) -> tuple[int, int | None]:
        """The offset and step of the first complete line starting at or after ``pos``."""
        file.seek(pos)
        if pos > 0:
            file.seek(pos - 1)
            file.readline()  # to the end of the line `pos - 1` is in
        while True:
            start = file.tell()
            line = file.readline()
            if not line.endswith(b"\n"):
                return start, None
            step = _line_step(line)
            if step is not None:
                return start, step


def _line_step(line: bytes) -> int | None:
    match = _STEP.match(line)
    if match:
        return int(match.group(1))
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _lock_pids(run_dir: Path) -> list[tuple[Any, Any]]:
    """(pid, host) of each lock file in ``run_dir`` that names one (a bare number or JSON)."""
    holders = []
    for lock in [*run_dir.glob("*.lock"), *run_dir.glob(".*lock")]:
        try:
            text = lock.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            holders.append((int(text), None))
            continue
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict):
            holders.append((data.get("pid"), data.get("host") or data.get("hostname")))
    return holders


def last_change(run_dir: Path) -> float:
    """The newest modification time of the run's files that a live run writes."""
    times = [0.0]
    for name in ("metrics.jsonl", "samples.jsonl", "status.json", LOG_FILE):
        with contextlib.suppress(OSError):
            times.append((run_dir / name).stat().st_mtime)
    return max(times)


def run_state(run_dir: Path, last_step: int, max_steps: int | None) -> tuple[str, str]:
    """(``running`` | ``finished`` | ``crashed`` | ``interrupted`` | ``stopped``, a reason)."""
    status = read_status(run_dir) or {}
    state = status.get("state")
    if state == "running" and pid_alive(status.get("pid"), status.get("host")):
        return "running", f"process {status['pid']} is alive"
    if any(pid_alive(pid, host) for pid, host in _lock_pids(run_dir)):
        return "running", "the lock's holder is alive"
    checkable = status.get("host") in (None, socket.gethostname()) and state is not None
    if not checkable and time.time() - last_change(run_dir) < HEARTBEAT_S:
        return "running", f"files changed in the last {HEARTBEAT_S:.0f} s"
    if state in ("finished", "crashed", "interrupted"):
        return state, status.get("error", "")
    if max_steps is not None and last_step >= max_steps:
        return "finished", f"step {last_step} of {max_steps} logged"
    if state == "running":
        return "crashed", f"process {status.get('pid')} ended without recording how"
    return "stopped", "no status.json and the last step is not logged"


@dataclass
class RunSummary:
    """One row of the runs table."""

    name: str
    path: Path
    status: str
    reason: str
    recipe: str
    algorithm: str
    model: str
    steps: int
    max_steps: int | None
    best_reward: float | None
    last_reward: float | None
    wall_time_s: float | None


class RunReader:
    """All a board needs from one run directory, with its files' readers kept between calls."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        self.metrics = MetricsFile(path / "metrics.jsonl")
        self.samples = SamplesFile(path / "samples.jsonl")
        self._config: tuple[float, dict[str, Any]] = (-1.0, {})

    def config(self) -> dict[str, Any]:
        """config.yaml as plain dicts (re-read when it changes)."""
        path = self.path / "config.yaml"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return {}
        if mtime != self._config[0]:
            from omegaconf import OmegaConf

            try:
                loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            except Exception:  # half-written or hand-edited: show the run without it
                loaded = {}
            self._config = (mtime, loaded if isinstance(loaded, dict) else {})
        return self._config[1]

    def summary(self) -> RunSummary:
        cfg = self.config()
        rows = self.metrics.rows()
        last_step = rows[-1]["step"] if rows else 0
        max_steps = cfg.get("trainer", {}).get("max_steps")
        state, reason = run_state(self.path, last_step, max_steps)
        rewards = [r["reward/mean"] for r in rows if isinstance(r.get("reward/mean"), (int, float))]
        status = read_status(self.path) or {}
        recipe = next((a.split("=", 1)[1] for a in status.get("argv", []) if a.startswith("recipe=")), "")
        if "started" in status:
            wall = status.get("ended", time.time()) - status["started"]
            if state != "running" and "ended" not in status:
                wall = last_change(self.path) - status["started"]
        else:
            wall = sum(r.get("timing/step_s") or 0.0 for r in rows) or None
        return RunSummary(
            name=self.name,
            path=self.path,
            status=state,
            reason=reason,
            recipe=recipe,
            algorithm=str(cfg.get("algorithm", {}).get("name", "")),
            model=str(cfg.get("model", {}).get("path", "")),
            steps=last_step,
            max_steps=max_steps,
            best_reward=max(rewards) if rewards else None,
            last_reward=rewards[-1] if rewards else None,
            wall_time_s=wall,
        )


class RunsRoot:
    """The run directories under one folder, each with its :class:`RunReader` (kept across calls,
    so that every file is read incrementally)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._readers: dict[Path, RunReader] = {}

    def readers(self) -> list[RunReader]:
        runs = find_runs(self.root)
        for path in runs:
            if path not in self._readers:
                name = str(path.relative_to(self.root)) if path != self.root else path.name
                self._readers[path] = RunReader(path, name)
        return [self._readers[p] for p in runs]

    def get(self, name: str) -> RunReader | None:
        return next((r for r in self.readers() if r.name == name), None)
