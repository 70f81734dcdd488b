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

from rlft.registry import NoTraits, Registry
from rlft.weights.buckets import BucketSpec, TensorSlot, copy_into, pack, plan_buckets, unpack
from rlft.weights.collective import CollectiveReceiver, CollectiveSender, CollectiveTransport
from rlft.weights.cuda_ipc import BucketExporter, BucketPayload, CudaIpcTransport, load_bucket
from rlft.weights.group import WeightGroupSpec
from rlft.weights.object_store import ObjectStoreTransport, WeightUpdate
from rlft.weights.transport import Transport

TRANSPORTS: Registry[NoTraits] = Registry("weights.transport", by_path=False)
"""Transport factories by ``weights.transport`` name: ``fn(bucket_mb, local) -> Transport``."""

log = logging.getLogger(__name__)


@TRANSPORTS.register("object_store")
def _object_store(bucket_mb: float, local: bool) -> Transport:
    return ObjectStoreTransport(bucket_mb)


@TRANSPORTS.register("collective")
def _collective(bucket_mb: float, local: bool) -> Transport:
    """In local mode (one process) a collective cannot work: the in-process bucket hand-over of
    ``cuda_ipc`` instead."""
    if local:
        log.warning("weights.transport=collective needs cluster.mode=ray; using in-process buckets")
        return CudaIpcTransport(bucket_mb)
    return CollectiveTransport(bucket_mb)


@TRANSPORTS.register("cuda_ipc")
def _cuda_ipc(bucket_mb: float, local: bool) -> Transport:
    return CudaIpcTransport(bucket_mb)


def make_transport(name: str, bucket_mb: float = 512, local: bool = False) -> Transport:
    """The transport named by ``weights.transport`` (``local``: cluster.mode=local)."""
    return TRANSPORTS.lookup(name)(bucket_mb, local)


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
