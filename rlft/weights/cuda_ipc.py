"""Weight sync by CUDA IPC handles, for a learner and rollout workers on the same GPU.

The learner packs one bucket into its staging buffer and exports a CUDA IPC handle to it
(``torch.multiprocessing.reductions.reduce_tensor``); the handle, a few hundred bytes, travels
through Ray; each worker maps the learner's memory (once: the staging buffer is reused, and the
mapping is kept open between buckets and syncs) and copies the bucket's tensors into its engine.
The driver runs the buckets one at a time: the learner packs bucket i + 1 only after every worker
has copied bucket i out.

Without a handle to pass, the same protocol moves the bucket itself: when the learner is on the
CPU, each bucket travels by value through Ray's object store; in local mode (one process) the
tensor is handed over directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import reduce_tensor

from rlft.weights.buckets import BucketPacker, BucketSpec, unpack
from rlft.weights.transport import LoadFn, MiB, sync_metrics


@dataclass
class BucketPayload:
    """One bucket for one receiver: its layout, the policy version, and the data, either as a
    CUDA IPC handle (``handle``) or as the tensor itself (``tensor``)."""

    spec: BucketSpec
    version: int
    handle: tuple[Any, tuple[Any, ...]] | None = None
    """``(rebuild function, args)`` from ``reduce_tensor``: maps the sender's GPU memory."""
    tensor: torch.Tensor | None = None
    """The bucket by value (CPU), or in the sender's own process the GPU tensor (never pickled)."""
    last: bool = False
    """Whether it is the sync's last bucket: the receiver closes its weight update after it."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.handle is not None:
            state["tensor"] = None  # another process opens the handle instead
        return state

    def open(self) -> torch.Tensor:
        """The bucket's flat tensor (on a GPU: a view of the sender's staging buffer)."""
        if self.tensor is not None:
            return self.tensor
        if self.handle is None:
            raise ValueError("bucket payload carries neither a tensor nor a CUDA IPC handle")
        rebuild, args = self.handle
        return rebuild(*args)


class BucketExporter:
    """Learner side: packs a bucket and hands out one payload per receiver."""

    def __init__(self, model: torch.nn.Module, bucket_bytes: int):
        self.packer = BucketPacker(model, bucket_bytes)

    @property
    def num_buckets(self) -> int:
        return len(self.packer.plan)

    def export(self, index: int, version: int, num_receivers: int) -> list[BucketPayload]:
        """Bucket ``index``, ready to read when this returns. One IPC handle per receiver: torch
        counts each handle's reader to know when the sender's memory may be released."""
        spec, last = self.packer.plan[index], index == self.num_buckets - 1
        flat = self.packer.pack(index)
        if not flat.is_cuda:
            return [BucketPayload(spec, version, tensor=flat.clone(), last=last)] * num_receivers
        torch.cuda.current_stream(flat.device).synchronize()
        return [
            BucketPayload(spec, version, handle=reduce_tensor(flat), tensor=flat, last=last)
            for _ in range(num_receivers)
        ]


_mapped: torch.Tensor | None = None
"""The last bucket opened from a handle, kept alive so that torch's IPC cache (weak references,
keyed by handle) reuses its mapping for the next bucket and the next sync, which come from the same
staging buffer, instead of opening and closing it every time."""


def load_bucket(payload: BucketPayload, load: LoadFn) -> int:
    """Receiver side: open the payload and ``load`` its tensors; returns the bytes loaded. On a GPU
    this waits for the copies, since the sender repacks its buffer as soon as we return."""
    global _mapped
    flat = payload.open()
    nbytes = load(unpack(payload.spec, flat))
    if flat.is_cuda:
        torch.cuda.current_stream(flat.device).synchronize()
        if payload.handle is not None:
            _mapped = flat
    return nbytes


class CudaIpcTransport:
    """Driver side: asks the learner to plan its buckets on the first sync, then per bucket gets
    the payloads from the learner and gives one to each worker. The driver sees only handles
    (or, on the CPU, the buckets)."""

    def __init__(self, bucket_mb: float = 512):
        self.bucket_bytes = int(bucket_mb * MiB)
        self._num_buckets: int | None = None

    def sync(self, cluster: Any, learner: Any, workers: list[Any]) -> dict[str, float]:
        start = time.perf_counter()
        if self._num_buckets is None:
            self._num_buckets = cluster.get(learner.prepare_weight_buckets.remote(self.bucket_bytes))
        nbytes = 0
        for index in range(self._num_buckets):
            payloads = cluster.get(learner.export_weight_bucket.remote(index, len(workers)))
            loads = [w.load_weight_bucket.remote(p) for w, p in zip(workers, payloads, strict=True)]
            nbytes += sum(cluster.get(loads))
        return sync_metrics(start, nbytes)
