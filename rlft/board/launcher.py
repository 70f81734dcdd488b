"""Runs started from the board: ``rlft train`` in a child process of its own session, its output
in the run directory's train.log; stopped with SIGINT (the run then records ``interrupted``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from rlft.board.runs import LOG_FILE


class Launcher:
    """The runs this board started, by run directory."""

    def __init__(self, cwd: Path | None = None):
        self.cwd = cwd
        self.processes: dict[Path, subprocess.Popen[bytes]] = {}

    def start(self, run_dir: Path, args: list[str]) -> subprocess.Popen[bytes]:
        """``python -m rlft train *args`` writing into ``run_dir`` (created here, for its log)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / LOG_FILE).open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "rlft", "train", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                start_new_session=True,  # its own process group, so that a stop reaches all of it
            )
        self.processes[run_dir] = process
        return process

    def running(self, run_dir: Path) -> bool:
        process = self.processes.get(run_dir)
        return process is not None and process.poll() is None

    def stop(self, run_dir: Path) -> bool:
        """Send SIGINT to the run's process group (Ctrl-C); False if it is not running."""
        if not self.running(run_dir):
            return False
        os.killpg(self.processes[run_dir].pid, signal.SIGINT)
        return True

    def stop_all(self) -> None:
        for run_dir in list(self.processes):
            self.stop(run_dir)


def tail(path: Path, max_bytes: int = 20_000) -> str:
    """The end of a text file (at most ``max_bytes``), or '' if it does not exist."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - max_bytes))
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
