"""Weight sync through Ray's object store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from rlft.weights.transport import sync_metrics


@dataclass
class WeightUpdate:
    """A full set of policy weights (on the CPU) and the policy version they are."""

    tensors: dict[str, torch.Tensor]
    version: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class ObjectStoreTransport:
    """The learner's ``get_weights`` result lands in Ray's object store once; each rollout worker
    reads (and deserialises its own copy of) it from there. The driver only passes the reference
    along, so it never holds the weights. In local mode the same calls are plain function calls.
    Works everywhere; the whole state dict moves as one object (through CPU memory)."""

    def sync(self, cluster: Any, learner: Any, workers: list[Any]) -> dict[str, float]:
        start = time.perf_counter()
        update = learner.get_weights.remote()
        received = cluster.get([w.load_weights.remote(update) for w in workers])
        return sync_metrics(start, sum(received))
