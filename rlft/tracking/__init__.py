"""Metric trackers: every step's flat metrics dict goes to each enabled one (see DESIGN "Metrics")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlft.config import TrackingConfig
from rlft.tracking.base import Tracker, Trackers
from rlft.tracking.console import ConsoleTracker, summarize_rewards
from rlft.tracking.jsonl import JsonlTracker, read_metrics
from rlft.tracking.wandb_tracker import WandbTracker, resolve_wandb_mode

__all__ = [
    "ConsoleTracker",
    "JsonlTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "make_trackers",
    "read_metrics",
    "resolve_wandb_mode",
    "summarize_rewards",
]


def make_trackers(
    cfg: TrackingConfig,
    run_dir: Path,
    total_steps: int,
    start_step: int,
    config_dict: dict[str, Any],
) -> Trackers:
    """Build the trackers ``cfg`` enables. The console tracker comes last, so its live bar starts
    only once wandb (the slow one) is up, and its summary prints after wandb's closing lines."""
    trackers: list[Tracker] = []
    if cfg.jsonl:
        trackers.append(JsonlTracker(run_dir))
    if cfg.wandb.enabled and cfg.wandb.mode != "disabled":
        trackers.append(
            WandbTracker(run_dir, config_dict, cfg.wandb.project, cfg.wandb.mode, name=Path(run_dir).name)
        )
    if cfg.console:
        trackers.append(ConsoleTracker(total_steps, start_step, history=_reward_history(run_dir, start_step)))
    return Trackers(trackers)


def _reward_history(run_dir: Path, start_step: int) -> list[tuple[int, float]]:
    """(step, reward/mean) of the steps up to ``start_step`` in the run's metrics.jsonl, if any."""
    path = Path(run_dir) / "metrics.jsonl"
    if start_step == 0 or not path.is_file():
        return []
    return [
        (row["step"], row["reward/mean"])
        for row in read_metrics(path)
        if row["step"] <= start_step and isinstance(row.get("reward/mean"), int | float)
    ]
