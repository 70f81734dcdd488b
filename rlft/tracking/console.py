"""Console tracker: a live ``rich`` progress bar, periodic metric lines, and a reward summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from statistics import fmean
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Metric name -> short label, in the order the compact line shows them (when present).
_LABELS = {
    "reward/mean": "reward",
    "loss/policy": "loss",
    "loss": "loss",
    "rewards/accuracy": "acc",
    "rewards/margin": "margin",
    "kl": "kl",
    "entropy": "entropy",
    "clip_frac": "clip",
    "response_len/mean": "len",
    "throughput/tokens_per_s": "tok/s",
}
_LINE_METRICS = tuple(_LABELS)
_BAR_METRICS = ("reward/mean", "throughput/tokens_per_s", "kl", "loss", "rewards/accuracy")
_BLOCKS = "▁▂▃▄▅▆▇█"


def _format_metrics(metrics: dict[str, float], names: tuple[str, ...]) -> str:
    """``"reward 0.412  tok/s 1234"`` for those of ``names`` present in ``metrics``."""
    return "  ".join(f"{_LABELS[name]} {metrics[name]:.4g}" for name in names if name in metrics)


def _format_seconds(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))


def _sparkline(values: list[float], width: int = 40) -> str:
    """One block character per bucket of consecutive values (at most ``width``), scaled min to max."""
    n = len(values)
    buckets = min(width, n)
    means = [fmean(values[i * n // buckets : (i + 1) * n // buckets]) for i in range(buckets)]
    low, high = min(means), max(means)
    span = high - low or 1.0
    return "".join(_BLOCKS[round((m - low) / span * (len(_BLOCKS) - 1))] for m in means)


def summarize_rewards(rewards: list[float], steps: list[int] | None = None) -> str:
    """A short text summary of a run's ``reward/mean`` curve: the mean over the first and last 5
    steps (fewer if the run is shorter), the best step, and a sparkline of the whole curve.

    ``steps`` are the step numbers of ``rewards`` (default ``1, 2, ...``). NaN and infinite
    rewards are skipped.
    """
    steps = list(range(1, len(rewards) + 1)) if steps is None else steps
    points = [(step, reward) for step, reward in zip(steps, rewards, strict=True) if math.isfinite(reward)]
    if not points:
        return "reward/mean: no finite values logged"
    values = [reward for _, reward in points]
    k = min(5, len(values))
    best_step, best = max(points, key=lambda point: point[1])
    return (
        f"reward/mean over {len(values)} steps: first {k} mean {fmean(values[:k]):.4g}, "
        f"last {k} mean {fmean(values[-k:]):.4g}, best {best:.4g} at step {best_step}\n"
        f"{_sparkline(values)}  ({min(values):.4g} .. {max(values):.4g})"
    )


class ConsoleTracker:
    """A live progress bar (step i/N, elapsed, ETA) whose description shows the latest reward,
    throughput and KL, plus a compact line of the key metrics every ``print_every`` steps and at
    close, and a reward-curve summary at close.

    When the console is not a terminal (CI logs, files), rich draws the bar only once, at close;
    instead every step prints one compact line (with step i/N, elapsed and ETA).
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        print_every: int = 10,
        console: Console | None = None,
        history: Sequence[tuple[int, float]] = (),
    ) -> None:
        """``history``: (step, reward/mean) of the steps a resumed run logged before ``start_step``,
        so that the summary covers the whole run."""
        self.console = console or Console()
        self.total_steps = total_steps
        self.print_every = print_every if self.console.is_terminal else 1
        self._rewards = [reward for _, reward in history]
        self._reward_steps = [step for step, _ in history]
        self._last: tuple[int, dict[str, float]] | None = None
        # Averaging speed over an hour gives an ETA even when one step takes minutes.
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            speed_estimate_period=3600.0,
        )
        self._task = self._progress.add_task("starting", total=total_steps, completed=start_step)
        self._progress.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Advance the bar to ``step``; print the compact line if it is due. A step logged again
        (a run restarted from an older checkpoint redoes the steps after it) replaces the earlier
        values of that step and the later ones."""
        while self._reward_steps and self._reward_steps[-1] >= step:
            self._reward_steps.pop()
            self._rewards.pop()
        if "reward/mean" in metrics:
            self._rewards.append(metrics["reward/mean"])
            self._reward_steps.append(step)
        self._last = (step, metrics)
        self._progress.update(self._task, completed=step, description=_format_metrics(metrics, _BAR_METRICS))
        if step % self.print_every == 0:
            self._print_line(step, metrics)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Samples are not shown on the console (see samples.jsonl or wandb)."""

    def close(self) -> None:
        """Print the last step's line if not printed yet, stop the bar, print the reward summary."""
        if self._last is not None and self._last[0] % self.print_every != 0:
            self._print_line(*self._last)
        self._progress.stop()
        if self._rewards:
            self.console.print(
                summarize_rewards(self._rewards, self._reward_steps), highlight=False, soft_wrap=True
            )

    def _print_line(self, step: int, metrics: dict[str, float]) -> None:
        task = self._progress.tasks[0]
        self.console.print(
            f"step {step}/{self.total_steps}  {_format_metrics(metrics, _LINE_METRICS)}  "
            f"[{_format_seconds(task.elapsed)} < {_format_seconds(task.time_remaining)}]",
            markup=False,
            soft_wrap=True,
        )
