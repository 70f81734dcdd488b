"""The tracker protocol and :class:`Trackers`, which fans one step's metrics out to every tracker.

Steps count completed RL steps: the first step logs ``step=1``, and a run resumed from a
checkpoint taken after ``k`` steps continues at ``k + 1``.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Protocol


class Tracker(Protocol):
    """Receives one flat metrics dict per step, sample completions, and a final close."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record the metrics of one step (``{"reward/mean": 0.4, "loss/policy": ...}``)."""
        ...

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Record sample completions of one step, one dict per sample (prompt, completion, reward...)."""
        ...

    def close(self) -> None:
        """Flush and release everything; called once at the end of the run."""
        ...


class Trackers:
    """Sends every call to each of its trackers; a context manager that closes them all on exit."""

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log one step's metrics to every tracker."""
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Log one step's sample rows to every tracker."""
        for tracker in self.trackers:
            tracker.log_samples(rows, step)

    def close(self) -> None:
        """Close every tracker, even if some raise, then re-raise the first error.

        Closing twice is a no-op, so an explicit ``close()`` inside the ``with`` block is safe.
        """
        trackers, self.trackers = self.trackers, []
        first_error: BaseException | None = None
        for tracker in trackers:
            try:
                tracker.close()
            except BaseException as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def __enter__(self) -> Trackers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
