"""The one interface every weight-sync transport implements."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch

MiB = 1 << 20

LoadFn = Callable[[Iterable[tuple[str, torch.Tensor]]], int]
"""A receiver's ``load_named_tensors``: copies named tensors into its model in place, returns the bytes."""


class Transport(Protocol):
    """Moves the learner's current weights, and their policy version, to every rollout worker.

    ``cluster`` is an ``rlft.cluster.Cluster``; ``learner`` and ``workers`` are its handles
    (Ray actors or in-process ``LocalActor``s). A transport knows nothing about losses."""

    def sync(self, cluster: Any, learner: Any, workers: list[Any]) -> dict[str, float]:
        """Returns ``timing/weight_sync_s`` and ``weight_sync/bytes`` (received, over all workers)."""
        ...


def sync_metrics(start: float, nbytes: int) -> dict[str, float]:
    """The metrics of a sync that began at ``time.perf_counter() == start``."""
    return {"timing/weight_sync_s": time.perf_counter() - start, "weight_sync/bytes": float(nbytes)}
