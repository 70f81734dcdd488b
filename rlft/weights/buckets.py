"""Bucketing: a model's tensors packed into a few flat buffers, so that weights move in a handful
of large transfers instead of one per tensor.

A plan is computed once on the sender from the model's tensors and sent to the receivers: a list
of :class:`BucketSpec`, each one dtype and an ordered set of :class:`TensorSlot` (name, shape,
element offset). Both sides then agree on every bucket's layout without more metadata per sync.
The sender packs a bucket with one ``torch.cat`` into a reusable :class:`StagingBuffer`; the
receiver cuts the same buffer back into named views with :func:`unpack` and copies each view into
its own tensor of that name (:func:`copy_into`), in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorSlot:
    """Where one named tensor lives inside a bucket."""

    name: str
    shape: tuple[int, ...]
    offset: int
    """Position of the tensor's first element in the bucket, in elements of the bucket's dtype."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class BucketSpec:
    """One flat buffer's layout: a dtype and the tensors packed in it, back to back."""

    dtype: torch.dtype
    slots: tuple[TensorSlot, ...]

    @property
    def numel(self) -> int:
        last = self.slots[-1]
        return last.offset + last.numel

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def plan_buckets(tensors: Mapping[str, torch.Tensor], bucket_bytes: int) -> list[BucketSpec]:
    """Cut ``tensors`` into buckets of at most ``bucket_bytes`` bytes, each of one dtype.

    Tensors are grouped by dtype (groups in order of first appearance, tensors in their order);
    a bucket is closed when the next tensor would overflow it. A tensor larger than
    ``bucket_bytes`` gets a bucket of its own (so the largest bucket, and each side's staging
    buffer, is ``max(bucket_bytes, largest tensor)``)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket size must be positive, got {bucket_bytes} bytes")
    by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        by_dtype.setdefault(tensor.dtype, []).append((name, tensor))
    plan: list[BucketSpec] = []
    for dtype, members in by_dtype.items():
        slots: list[TensorSlot] = []
        offset = 0
        for name, tensor in members:
            size = tensor.numel() * dtype.itemsize
            if slots and (offset * dtype.itemsize + size) > bucket_bytes:
                plan.append(BucketSpec(dtype, tuple(slots)))
                slots, offset = [], 0
            slots.append(TensorSlot(name, tuple(tensor.shape), offset))
            offset += tensor.numel()
        if slots:
            plan.append(BucketSpec(dtype, tuple(slots)))
    return plan


def pack(
    spec: BucketSpec, tensors: Mapping[str, torch.Tensor], out: torch.Tensor | None = None
) -> torch.Tensor:
    """The tensors of ``spec`` flattened into one 1-D tensor (into ``out`` if given): one
    batched copy kernel on a GPU."""
    parts = [tensors[slot.name].reshape(-1) for slot in spec.slots]
    if out is None:
        return torch.cat(parts)
    return torch.cat(parts, out=out)


def unpack(spec: BucketSpec, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, view)`` for each tensor of ``spec``; the views share ``flat``'s memory."""
    if flat.dtype != spec.dtype or flat.numel() != spec.numel:
        raise ValueError(
            f"bucket buffer is {flat.numel()} x {flat.dtype}, its spec says {spec.numel} x {spec.dtype}"
        )
    for slot in spec.slots:
        yield slot.name, flat.narrow(0, slot.offset, slot.numel).view(slot.shape)


def unique_named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict (detached, live tensors) with repeats of the same memory left out:
    tied weights (e.g. the input embedding and the LM head) are sent once, under their first name;
    a receiver of the same architecture shares them the same way."""
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
        )
        if key not in seen:
            seen.add(key)
            out[name] = tensor
    return out


def sync_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a rollout engine needs to follow the learner (detached, live tensors): for a peft
    model only its trainable tensors (the LoRA adapters; the frozen base is the same on every
    engine, which carries the same unmerged adapters), else every tensor once
    (:func:`unique_named_tensors`)."""
    if getattr(model, "peft_config", None):
        return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    return unique_named_tensors(model)


@torch.no_grad()
def copy_into(targets: Mapping[str, torch.Tensor], tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy each ``(name, tensor)`` into ``targets[name]`` in place (casting dtype and moving device
    as needed); returns the bytes received. Unknown names and shape mismatches raise."""
    nbytes = 0
    for name, src in tensors:
        dst = targets.get(name)
        if dst is None:
            raise KeyError(f"weight sync: the receiving model has no tensor named {name!r}")
        if dst.shape != src.shape:
            raise ValueError(
                f"weight sync: {name} is {tuple(dst.shape)} here but {tuple(src.shape)} in the update"
            )
        dst.copy_(src)
        nbytes += src.numel() * src.element_size()
    return nbytes


class StagingBuffer:
    """One reusable byte buffer big enough for the largest bucket of a plan; each bucket uses its
    first ``spec.nbytes`` bytes, viewed as the bucket's dtype. Reusing one allocation keeps memory
    bounded by a bucket and lets CUDA IPC receivers keep the mapping open between syncs."""

    def __init__(self, plan: list[BucketSpec], device: torch.device):
        self.bytes = torch.empty(max(spec.nbytes for spec in plan), dtype=torch.uint8, device=device)

    def view(self, spec: BucketSpec) -> torch.Tensor:
        return self.bytes[: spec.nbytes].view(spec.dtype)


class BucketPacker:
    """Sender side: the tensors a rollout engine needs (:func:`sync_tensors`: adapters only with
    LoRA, tied weights once), their bucket plan and a staging buffer.

    The tensors are the model's own storage, updated in place by the optimizer, so the plan and
    the references stay valid across syncs (as long as parameters are not replaced)."""

    def __init__(self, model: torch.nn.Module, bucket_bytes: int):
        self.tensors = sync_tensors(model)
        if not self.tensors:
            raise ValueError("weight sync: the model has no tensors")
        self.plan = plan_buckets(self.tensors, bucket_bytes)
        self.device = next(iter(self.tensors.values())).device
        self.staging = StagingBuffer(self.plan, self.device)

    @property
    def nbytes(self) -> int:
        """Bytes of one full set of weights (all buckets)."""
        return sum(spec.nbytes for spec in self.plan)

    def pack(self, index: int) -> torch.Tensor:
        """Bucket ``index`` packed into the staging buffer (overwritten by the next call)."""
        spec = self.plan[index]
        return pack(spec, self.tensors, out=self.staging.view(spec))
