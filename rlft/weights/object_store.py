"""Weight sync through Ray's object store."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rlft.weights.buckets import BucketSpec, pack, plan_buckets, unpack
from rlft.weights.transport import MiB, sync_metrics


@dataclass
class WeightUpdate:
    """A set of policy weights packed in flat CPU buckets (:mod:`rlft.weights.buckets`), and the
    policy version they are. Tied tensors are in it once; with LoRA only the adapters."""

    plan: list[BucketSpec]
    buckets: list[torch.Tensor]
    version: int

    @classmethod
    def pack(cls, tensors: Mapping[str, torch.Tensor], version: int, bucket_bytes: int) -> WeightUpdate:
        """``tensors`` (on any device) packed into buckets of about ``bucket_bytes``, on the CPU."""
        plan = plan_buckets(tensors, bucket_bytes)
        return cls(plan, [pack(spec, tensors).cpu() for spec in plan], version)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buckets)

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, view)`` of every tensor, bucket by bucket (views share the buckets' memory)."""
        for spec, flat in zip(self.plan, self.buckets, strict=True):
            yield from unpack(spec, flat)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights by name (views into the buckets)."""
        return dict(self.named_tensors())


class ObjectStoreTransport:
    """The learner's ``get_weights`` result (buckets of ``bucket_mb``) lands in Ray's object store
    once; each rollout worker reads (and deserialises its own copy of) it from there and copies
    the tensors into its engine. The driver only passes the reference along, so it never holds
    the weights. In local mode the same calls are plain function calls. Works everywhere; the
    weights move through CPU memory."""

    def __init__(self, bucket_mb: float = 512):
        self.bucket_bytes = int(bucket_mb * MiB)

    def sync(self, cluster: Any, learner: Any, workers: list[Any]) -> dict[str, float]:
        start = time.perf_counter()
        update = learner.get_weights.remote(self.bucket_bytes)
        received = cluster.get([w.load_weights.remote(update) for w in workers])
        return sync_metrics(start, sum(received))
