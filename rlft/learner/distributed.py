"""Data parallelism across learner ranks: one torch.distributed group of ``learner.num_workers``
learner processes (gloo on the CPU, NCCL on GPUs).

Each rank trains on its share of the batch. The losses are normalised by the counts of the whole
(global) mini-batch, so the sum of the ranks' gradients is the one a single learner would compute
on the whole mini-batch. Two strategies (``learner.strategy``):

- ``dp``: each rank holds a whole copy of the model; before every optimizer step the gradients
  are summed over the ranks (bucketed all-reduce), so every rank takes the same step and the
  replicas stay equal.
- ``fsdp2``: parameters, gradients and optimizer state are sharded over the ranks with torch's
  FSDP2 (``fully_shard``, one unit per transformer block and one for the rest); each forward
  all-gathers a block's parameters and each backward reduce-scatters its gradients. Every rank
  must then run the same number of forward and backward passes: ranks with fewer micro-batches
  run extra passes that contribute nothing (:meth:`DataParallel.extra_passes`). Full weights are
  gathered (to rank 0, on the CPU) for the rollout workers and for checkpoints, which therefore
  have the same format as one learner's.

The rendezvous reuses the weight-sync group's building blocks (:mod:`rlft.weights.group`): rank 0
opens a ``TCPStore`` on a free port and hands back its address (:func:`open_rendezvous`); every
rank then joins the default process group through that store (:class:`DataParallel`). The
weight-sync groups are built from their own stores and process-group objects, so they live
alongside this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rlft.modeling import base_model
from rlft.weights.buckets import pack, plan_buckets, unpack
from rlft.weights.group import DEFAULT_TIMEOUT, node_ip, open_store

GRAD_BUCKET_BYTES = 64 << 20
"""Gradients are summed in flat buckets of about this size (one all-reduce per bucket)."""

_PREFIX = "rlft/learners"


@dataclass(frozen=True)
class RendezvousSpec:
    """Where the learner ranks meet: rank 0's store address, the number of ranks and the backend."""

    host: str
    port: int
    world_size: int
    backend: str
    """``nccl`` (learners on GPUs) or ``gloo`` (on the CPU)."""


@dataclass(frozen=True)
class Shard:
    """The rows of a global batch that one rank trains on (made by the driver's
    :func:`rlft.learner.group.split_by_tokens`)."""

    indices: list[int]
    """Positions of this rank's rows in the global batch, in order."""
    mini_batch_sizes: list[int]
    """This rank's rows in each optimizer step's mini-batch, in order (they sum to ``len(indices)``)."""
    total: int
    """Rows in the global batch."""


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def open_rendezvous(
    world_size: int, device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT
) -> tuple[RendezvousSpec, dist.TCPStore]:
    """Rank 0: open the store (on a free port) the other ranks connect to; returns its spec and
    the store, which rank 0 passes to :class:`DataParallel`."""
    store = open_store(world_size, timeout)
    return RendezvousSpec(node_ip(), store.port, world_size, backend_for(device)), store


class DataParallel:
    """This process's membership of the learners' (default) process group, and the collectives
    the learner needs: summed gradients, summed metrics, a maximum, rows gathered from all ranks."""

    def __init__(
        self,
        spec: RendezvousSpec,
        rank: int,
        device: torch.device,
        store: dist.TCPStore | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
    ):
        """Join (blocks until all ranks have joined). Rank 0 passes the store of
        :func:`open_rendezvous`; the others connect to ``spec.host:spec.port``."""
        if dist.is_initialized():
            raise RuntimeError("this process already belongs to a default process group")
        if spec.backend == "nccl":
            if device.type != "cuda":
                raise ValueError(f"data-parallel learners over NCCL need a GPU, rank {rank} is on {device}")
            torch.cuda.set_device(device if device.index is not None else torch.cuda.current_device())
        if store is None:
            store = dist.TCPStore(spec.host, spec.port, spec.world_size, is_master=False, timeout=timeout)
        dist.init_process_group(
            spec.backend,
            store=dist.PrefixStore(_PREFIX, store),
            rank=rank,
            world_size=spec.world_size,
            timeout=timeout,
        )
        self._store = store  # rank 0 serves the store: keep it alive with the group
        self.rank, self.world_size, self.device = rank, spec.world_size, device
        self.sharded = False
        """Whether the models are sharded with FSDP2 (:meth:`shard`)."""

    def shard(self, model: torch.nn.Module) -> None:
        """Shard ``model`` over the ranks with FSDP2, in place: each transformer block (the classes
        a Hugging Face model names in ``_no_split_modules``) is one unit, the rest of the model
        another. Its parameters become DTensors: build optimizers over them afterwards."""
        from torch.distributed.fsdp import fully_shard

        base = base_model(model)
        blocks = set(getattr(base, "_no_split_modules", None) or [])
        for module in list(model.modules())[1:]:
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
        self.sharded = True

    def extra_passes(self, count: int) -> int:
        """How many passes with no effect this rank adds after its ``count`` micro-batches so that
        all ranks run the same number (FSDP2's collectives pair up per pass); 0 unless sharded."""
        return int(self.max(count)) - count if self.sharded else 0

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def all_reduce_gradients(self, module: torch.nn.Module) -> None:
        """Sum the gradients of ``module``'s trainable parameters over all ranks, in place. A rank
        without a gradient for a parameter contributes zeros (every rank sends every bucket).

        Sharded, the backward passes have already reduce-scattered the ranks' mean (gloo has no
        pre-scaled sum): each rank's shard is multiplied by the number of ranks."""
        params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        if self.sharded:
            for p in params.values():
                if p.grad is not None:
                    p.grad.mul_(self.world_size)
            return
        for p in params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = {name: p.grad for name, p in params.items()}
        for spec in plan_buckets(grads, GRAD_BUCKET_BYTES):
            flat = pack(spec, grads)
            dist.all_reduce(flat)
            for name, view in unpack(spec, flat):
                grads[name].copy_(view)

    def sum(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (every rank must pass the same keys)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def max(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def gather_rows(
        self, rows: Mapping[str, torch.Tensor | None], indices: list[int], total: int
    ) -> dict[str, torch.Tensor | None]:
        """Reassemble a global batch of ``total`` rows from every rank's share. Each rank passes
        its rows (``[n]`` or ``[n, T]`` tensors, or None on every rank) and their positions
        ``indices`` in the global batch; ``[n, T]`` columns are zero-padded to the widest rank.
        Every rank gets the whole batch, on its device, in global order."""
        local = {k: None if v is None else v.detach().cpu() for k, v in rows.items()}
        shares: list[tuple[list[int], dict[str, torch.Tensor | None]]] = [None] * self.world_size  # type: ignore[list-item]
        dist.all_gather_object(shares, (indices, local))
        out: dict[str, torch.Tensor | None] = {}
        for key, value in local.items():
            if value is None:
                out[key] = None
                continue
            width = max(share[key].shape[1] for _, share in shares) if value.dim() == 2 else None
            shape = (total,) if width is None else (total, width)
            full = torch.zeros(shape, dtype=value.dtype)
            for idx, share in shares:
                part = share[key]
                if width is None:
                    full[idx] = part
                else:
                    full[idx, : part.shape[1]] = part
            out[key] = full.to(self.device)
        return out

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Sharded: ``model``'s whole state dict gathered on rank 0, on the CPU (empty on the
        other ranks; every rank must call this). Otherwise its own state dict."""
        if not self.sharded:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Sharded: load a whole state dict that rank 0 holds (the others pass ``{}``) into every
        rank's shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # Not strict: a checkpoint leaves out tied copies (the caller checks for unknown names).
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, state, options=options)

    def full_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Sharded: the optimizer's whole state, keyed by parameter name, gathered on rank 0."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)

    def load_full_optimizer_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        """Sharded: restore :meth:`full_optimizer_state` (held by rank 0; the others pass ``{}``)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)
