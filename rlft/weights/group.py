"""A torch.distributed process group of its own for weight sync: learner rank 0 + the rollout
workers (ranks 1..R).

It is built from a ``TCPStore`` and the backend's process-group class directly, not with
``init_process_group``: the default group of each process stays free (for data-parallel
learners, or for an engine that uses torch.distributed itself), and a process may belong to
this group and to others at once. Backend: NCCL when the learner's weights are on a GPU, gloo
on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from rlft.weights.buckets import BucketSpec

DEFAULT_TIMEOUT = timedelta(minutes=10)
_PREFIX = "rlft/weight_sync"


@dataclass(frozen=True)
class WeightGroupSpec:
    """What a rollout worker needs to join the group and read the broadcasts: the learner's
    rendezvous address, the group's size and backend, and the bucket plan."""

    host: str
    port: int
    world_size: int
    backend: str
    """``nccl`` or ``gloo``."""
    plan: list[BucketSpec] = field(default_factory=list)
    learner_gpu: str | None = None
    """UUID of rank 0's GPU: NCCL cannot join two ranks on one GPU, so a worker there refuses."""


def gpu_uuid(device: torch.device) -> str | None:
    """The GPU's UUID (the same in every process, whatever CUDA_VISIBLE_DEVICES), or None on the CPU."""
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(device).uuid)


def node_ip() -> str:
    """This node's address as Ray knows it (reachable from the other nodes), else loopback."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


def open_store(world_size: int, timeout: timedelta = DEFAULT_TIMEOUT) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free port (``store.port``), listening before anyone joins."""
    return dist.TCPStore("0.0.0.0", 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)


class WeightGroup:
    """Membership of one weight-sync group; ``broadcast`` from rank 0 is all it does."""

    def __init__(
        self,
        spec: WeightGroupSpec,
        rank: int,
        device: torch.device,
        store: dist.TCPStore | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
    ):
        """Join (blocks until all ``world_size`` ranks have joined). Rank 0 passes the store it
        opened with :func:`open_store`; the others connect to ``spec.host:spec.port``."""
        if spec.backend == "nccl" and device.type != "cuda":
            raise ValueError(f"weight sync over NCCL needs a GPU, but rank {rank} is on {device}")
        if spec.backend == "nccl" and rank > 0 and gpu_uuid(device) == spec.learner_gpu:
            raise ValueError(
                f"rank {rank} is on the learner's GPU, and NCCL cannot connect two ranks on one GPU: "
                "use weights.transport=cuda_ipc for rollout workers colocated with the learner"
            )
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self._store = store or dist.TCPStore(
            spec.host, spec.port, spec.world_size, is_master=False, timeout=timeout
        )
        prefixed = dist.PrefixStore(_PREFIX, self._store)
        if spec.backend == "nccl":
            torch.cuda.set_device(device)
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._pg = dist.ProcessGroupNCCL(prefixed, rank, spec.world_size, options)
        elif spec.backend == "gloo":
            self._pg = dist.ProcessGroupGloo(prefixed, rank, spec.world_size, timeout)
        else:
            raise ValueError(f"weight sync backend must be nccl or gloo, got {spec.backend!r}")
        # NCCL builds its communicator at the first collective: do it now, not in the first sync.
        self.broadcast(torch.zeros(1, device=device))

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """Rank ``src``'s ``tensor`` into everyone's ``tensor`` (same shape and dtype on all ranks).
        With NCCL this returns once the copy is queued on this device's current stream."""
        self._pg.broadcast(tensor, src).wait()
