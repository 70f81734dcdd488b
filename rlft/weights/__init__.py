"""Moving the learner's weights to the rollout workers.

A transport knows handles and tensors, nothing about losses. Three behind one interface
(:class:`Transport`, ``sync(cluster, learner, workers) -> metrics``), and ``auto``
(:func:`resolve_transport`), which picks one from where the learner and the workers are:

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
from typing import Any

from rlft.weights.buckets import BucketSpec, TensorSlot, copy_into, pack, plan_buckets, unpack
from rlft.weights.collective import CollectiveReceiver, CollectiveSender, CollectiveTransport
from rlft.weights.cuda_ipc import BucketExporter, BucketPayload, CudaIpcTransport, load_bucket
from rlft.weights.group import WeightGroupSpec, gpu_uuid
from rlft.weights.object_store import ObjectStoreTransport, WeightUpdate
from rlft.weights.transport import Transport

TRANSPORTS = ("auto", "object_store", "collective", "cuda_ipc")

log = logging.getLogger(__name__)


def resolve_transport(
    name: str, cluster: Any, learner: Any, workers: list[Any], sharded: bool = False
) -> str:
    """``weights.transport=auto`` -> the fastest transport that works for where the learner (rank 0)
    and the rollout workers are; other names unchanged. Each side reports the UUID of its GPU
    (``weight_sync_device``), so the rule sees the real placement, whatever the config asked for:

    - every worker on the learner's GPU (``cluster.colocate``, or fractional GPUs that Ray packed
      onto one device; in local mode, a learner on a GPU): ``cuda_ipc``;
    - every worker on a GPU other than the learner's (one or several nodes): ``collective`` (NCCL);
    - otherwise (a learner or worker on the CPU, some workers on the learner's GPU and some not,
      a sharded learner ``sharded=True``, whose weights rank 0 alone does not hold): ``object_store``.
    """
    if name != "auto":
        return name
    if sharded:
        return "object_store"
    learner_gpu = cluster.get(learner.weight_sync_device.remote())
    if learner_gpu is None:
        return "object_store"
    if cluster.local:
        return "cuda_ipc"  # one process: the buckets are handed over, no handle needed
    worker_gpus = cluster.get([w.weight_sync_device.remote() for w in workers])
    if all(gpu == learner_gpu for gpu in worker_gpus):
        return "cuda_ipc"
    if all(gpu is not None and gpu != learner_gpu for gpu in worker_gpus):
        return "collective"
    log.warning("weights.transport=auto: workers on the learner's GPU and on others; using object_store")
    return "object_store"


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
    if name == "auto":
        raise ValueError("weights.transport=auto is resolved by resolve_transport before make_transport")
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
    "gpu_uuid",
    "load_bucket",
    "make_transport",
    "pack",
    "plan_buckets",
    "resolve_transport",
    "unpack",
]
