"""Weight sync through Ray's object store."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlft.weights.buckets import BucketSpec, pack, plan_buckets, unpack
from rlft.weights.transport import MiB, sync_metrics


@dataclass
class WeightUpdate:
    """A set of policy weights packed in flat CPU buckets (:mod:`rlft.weights.buckets`), and the
    policy version they are. Tied tensors are in it once; with LoRA only the adapters.

    Each bucket is held as a numpy byte array: Ray serialises numpy arrays without a copy into its
    object store and readers map them from there, while a torch tensor would be pickled (copied)
    on the way in and again on the way out. The bytes are reinterpreted as the bucket's dtype
    (bfloat16 included) when read."""

    plan: list[BucketSpec]
    buckets: list[np.ndarray]
    version: int

    @classmethod
    def pack(cls, tensors: Mapping[str, torch.Tensor], version: int, bucket_bytes: int) -> WeightUpdate:
        """``tensors`` (on any device) packed into buckets of about ``bucket_bytes``, on the CPU
        (copied from a GPU into page-locked memory, the fastest device-to-host copy)."""
        plan = plan_buckets(tensors, bucket_bytes)
        buckets = []
        for spec in plan:
            flat = pack(spec, tensors)
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=flat.is_cuda)
            buckets.append(host.copy_(flat).view(torch.uint8).numpy())
        return cls(plan, buckets, version)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, view)`` of every tensor, bucket by bucket (views share the buckets' memory;
        read-only when the buckets come from Ray's object store)."""
        for spec, data in zip(self.plan, self.buckets, strict=True):
            with warnings.catch_warnings():  # object-store arrays are read-only; they are only read
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                flat = torch.from_numpy(data)
            yield from unpack(spec, flat.view(spec.dtype))

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
