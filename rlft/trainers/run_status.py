"""``status.json`` in a run directory: who runs it and how it ended, for ``rlft board``.

:func:`mark_running` writes ``{"state": "running", "pid", "host", "argv", "started"}`` when a
run's directory is created; :func:`mark_ended` (called by ``rlft train``) replaces the state with
``finished``, ``interrupted`` (Ctrl-C / SIGINT) or ``crashed`` (with the error). A run killed
outright leaves ``running`` with a process that no longer exists: readers check the pid.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
_command: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """The command line to record for runs this process starts (default: ``sys.argv[1:]``)."""
    global _command
    _command = list(argv)


def mark_running(run_dir: Path) -> None:
    """Record that this process runs ``run_dir`` now."""
    status = {
        "state": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "argv": sys.argv[1:] if _command is None else _command,
        "started": time.time(),
    }
    _write(run_dir, status)


def mark_ended(run_dir: Path, state: str, error: str | None = None) -> None:
    """Record how the run this process started in ``run_dir`` ended (no-op for a run it never
    started there, e.g. one stopped by bad input before its directory was written)."""
    status = read_status(run_dir)
    if status is None or status.get("pid") != os.getpid():
        return
    status.update(state=state, ended=time.time())
    if error:
        status["error"] = error
    _write(run_dir, status)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's status.json, or None if it has none (or an unreadable one)."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write(run_dir: Path, status: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file)."""
    tmp = run_dir / f".{STATUS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, run_dir / STATUS_FILE)


def pid_alive(pid: Any, host: Any = None) -> bool:
    """Whether process ``pid`` runs on this machine (False for another ``host``: it cannot be checked)."""
    if not isinstance(pid, int) or pid <= 0 or (host is not None and host != socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True
