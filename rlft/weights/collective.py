"""Weight sync by broadcast over a process group (NCCL across GPUs, gloo on the CPU).

Once, on the first sync: the learner plans the buckets and opens a rendezvous store
(``open_weight_group``); the driver passes that address and plan to every worker, and all
``1 + R`` ranks join the group at the same time (``join_weight_group``). Then every sync is one
call on each side, started together: the learner broadcasts a header (the policy version) and
then bucket after bucket (``broadcast_weights``); each worker receives into its staging buffer
and copies the bucket's tensors into its engine in place (``receive_weights``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlft.weights.buckets import BucketPacker, StagingBuffer, unpack
from rlft.weights.group import WeightGroup, WeightGroupSpec, gpu_uuid, node_ip, open_store
from rlft.weights.transport import LoadFn, MiB, sync_metrics


class CollectiveSender:
    """Learner side (rank 0): the bucket packer and the group."""

    def __init__(self, model: torch.nn.Module, bucket_bytes: int, world_size: int):
        """Plan the buckets and open the rendezvous store; :attr:`spec` is what workers need."""
        self.packer = BucketPacker(model, bucket_bytes)
        self._store = open_store(world_size)
        backend = "nccl" if self.packer.device.type == "cuda" else "gloo"
        self.spec = WeightGroupSpec(
            node_ip(), self._store.port, world_size, backend, self.packer.plan, gpu_uuid(self.packer.device)
        )
        self.group: WeightGroup | None = None

    def join(self) -> None:
        """Join as rank 0 (returns when every worker has joined too)."""
        self.group = WeightGroup(self.spec, 0, self.packer.device, store=self._store)

    def send(self, version: int) -> int:
        """Broadcast the policy version, then every bucket; returns the bytes of one copy."""
        if self.group is None:
            raise RuntimeError("join_weight_group must run before broadcast_weights")
        self.group.broadcast(torch.tensor([version], dtype=torch.int64, device=self.packer.device))
        for index in range(len(self.packer.plan)):
            self.group.broadcast(self.packer.pack(index))
        return self.packer.nbytes


class CollectiveReceiver:
    """Rollout-worker side (rank >= 1): the group and a staging buffer the size of a bucket."""

    def __init__(self, spec: WeightGroupSpec, rank: int, device: torch.device):
        self.spec, self.device = spec, device
        self.staging = StagingBuffer(spec.plan, device)
        self.group = WeightGroup(spec, rank, device)

    def receive(self, load: LoadFn) -> tuple[int, int]:
        """Receive one full set of weights, loading each bucket with ``load`` as it arrives;
        returns ``(policy version, bytes received)``."""
        header = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.group.broadcast(header)
        nbytes = 0
        for spec in self.spec.plan:
            flat = self.staging.view(spec)
            self.group.broadcast(flat)
            nbytes += load(unpack(spec, flat))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the weights are in place when this returns
        return int(header.item()), nbytes


class CollectiveTransport:
    """Driver side: connects the group on the first sync, then starts the learner's broadcast and
    the workers' receives together and waits for all of them. Needs each worker in its own
    process (``cluster.mode=ray``); NCCL also needs each on its own GPU (colocated on one GPU:
    use :class:`~rlft.weights.cuda_ipc.CudaIpcTransport`)."""

    def __init__(self, bucket_mb: float = 512):
        self.bucket_bytes = int(bucket_mb * MiB)
        self._connected = False

    def connect(self, cluster: Any, learner: Any, workers: list[Any]) -> None:
        """Create the group (learner rank 0, worker i rank i + 1); runs once."""
        if cluster.local:
            raise ValueError(
                "the collective weight transport needs the learner and rollout workers in separate "
                "processes (cluster.mode=ray); in local mode use cuda_ipc or object_store"
            )
        spec = cluster.get(learner.open_weight_group.remote(self.bucket_bytes, 1 + len(workers)))
        joins = [w.join_weight_group.remote(spec, rank) for rank, w in enumerate(workers, start=1)]
        cluster.get([learner.join_weight_group.remote(), *joins])
        self._connected = True

    def sync(self, cluster: Any, learner: Any, workers: list[Any]) -> dict[str, float]:
        start = time.perf_counter()
        if not self._connected:
            self.connect(cluster, learner, workers)
        sent = learner.broadcast_weights.remote()
        received = [w.receive_weights.remote() for w in workers]
        _, *nbytes = cluster.get([sent, *received])
        return sync_metrics(start, sum(nbytes))
