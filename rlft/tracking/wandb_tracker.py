"""Weights & Biases tracker. It goes online only if the user has set wandb up, else logs offline
into the run directory (``wandb sync <run_dir>/wandb/offline-run-*`` uploads it later)."""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_MODES = ("online", "offline", "disabled")


def _netrc_has_key(netrc_path: Path, host: str) -> bool:
    """Whether ``netrc_path`` holds a password (wandb's API key) for ``host``."""
    try:
        credentials = netrc.netrc(netrc_path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(credentials and credentials[2])


def resolve_wandb_mode(mode: str, env: Mapping[str, str], netrc_path: Path) -> str:
    """The wandb mode to run in. ``online``, ``offline`` and ``disabled`` are returned as given.

    ``auto`` respects ``WANDB_MODE`` if set; otherwise it is ``online`` if the user has logged in
    (``WANDB_API_KEY`` set, or an API key for the wandb host, ``api.wandb.ai`` or the one in
    ``WANDB_BASE_URL``, in ``netrc_path``), else ``offline``, so that nothing tries the network.
    """
    if mode in _MODES:
        return mode
    if mode != "auto":
        raise ValueError(f"tracking.wandb.mode must be auto, {', '.join(_MODES)}; got {mode!r}")
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    host = urlsplit(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    if env.get("WANDB_API_KEY") or _netrc_has_key(netrc_path, host):
        return "online"
    return "offline"


class WandbTracker:
    """Logs metrics with ``run.log`` and sample rows as a ``wandb.Table`` under the key ``samples``;
    wandb's files go to ``run_dir/wandb``."""

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any],
        project: str,
        mode: str = "auto",
        name: str | None = None,
    ) -> None:
        import wandb  # lazily: importing wandb takes about a second

        self._wandb = wandb
        netrc_path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
        self.run = wandb.init(
            project=project,
            name=name,
            config=config,
            dir=str(run_dir),
            mode=resolve_wandb_mode(mode, os.environ, netrc_path),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log one step's metrics at ``step``."""
        self.run.log(metrics, step=step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Log the rows as one table; its columns are the union of the rows' keys."""
        if not rows:
            return
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = self._wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        """Finish the run (in offline mode wandb prints the ``wandb sync`` command)."""
        self.run.finish()
