"""Moving the learner's weights to the rollout workers.

A transport knows handles and tensors, nothing about losses. Three behind one interface
(:class:`Transport`, ``sync(cluster, learner, workers) -> metrics``):

- ``object_store``: buckets through Ray's object store (works everywhere);
- ``collective``: bucketed broadcast over a process group of learner rank 0 + every rollout
  worker, NCCL across GPUs, gloo on the CPU (:mod:`rlft.weights.collective`);
- ``cuda_ipc``: bucketed CUDA IPC handles for workers on the learner's GPU
  (:mod:`rlft.weights.cuda_ipc`).

Bucketing (:mod:`rlft.weights.buckets`) packs tensors into a few flat buffers of about
``bucket_mb`` each; receivers copy them into their engine in place (``load_named_tensors``).
Every transport sends what :func:`~rlft.weights.buckets.sync_tensors` picks: tied weights once,
and with LoRA only the adapters.
"""

from __future__ import annotations

import logging

from rlft.weights.buckets import BucketSpec, TensorSlot, copy_into, pack, plan_buckets, unpack
from rlft.weights.collective import CollectiveReceiver, CollectiveSender, CollectiveTransport
from rlft.weights.cuda_ipc import BucketExporter, BucketPayload, CudaIpcTransport, load_bucket
from rlft.weights.group import WeightGroupSpec
from rlft.weights.object_store import ObjectStoreTransport, WeightUpdate
from rlft.weights.transport import Transport

TRANSPORTS = ("object_store", "collective", "cuda_ipc")

log = logging.getLogger(__name__)


def make_transport(name: str, bucket_mb: float = 512, local: bool = False) -> Transport:
    """The transport named by ``weights.transport``. In local mode (one process) ``collective``
    cannot work, so it is replaced by ``cuda_ipc``, which there hands the buckets over in-process."""
    if name == "object_store":
        return ObjectStoreTransport(bucket_mb)
    if name == "collective" and local:
        log.warning("weights.transport=collective needs cluster.mode=ray; using in-process buckets")
        return CudaIpcTransport(bucket_mb)
    if name == "collective":
        return CollectiveTransport(bucket_mb)
    if name == "cuda_ipc":
        return CudaIpcTransport(bucket_mb)
    raise ValueError(f"weights.transport={name!r} is not one of {TRANSPORTS}")


__all__ = [
    "TRANSPORTS",
    "BucketExporter",
    "BucketPayload",
    "BucketSpec",
    "CollectiveReceiver",
    "CollectiveSender",
    "CollectiveTransport",
    "CudaIpcTransport",
    "ObjectStoreTransport",
    "TensorSlot",
    "Transport",
    "WeightGroupSpec",
    "WeightUpdate",
    "copy_into",
    "load_bucket",
    "make_transport",
    "pack",
    "plan_buckets",
    "unpack",
]
