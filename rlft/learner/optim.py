"""Optimizer and learning-rate schedule of a learner (``learner.*``), and its mixed precision."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from rlft.config import LearnerConfig

LR_SCHEDULERS = ("constant", "linear", "cosine")
"""``learner.lr_scheduler`` values."""
MIXED_PRECISION = ("no", "bf16")
"""``learner.mixed_precision`` values."""


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: LearnerConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over the parameters that require gradients (only the adapters with LoRA); on a GPU
    its fused implementation (one kernel per step instead of one per operation and tensor group)."""
    trainable = [p for p in params if p.requires_grad]
    fused = bool(trainable) and all(p.is_cuda for p in trainable)
    return torch.optim.AdamW(
        trainable, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused or None
    )


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of update ``step`` (0-based) as a fraction of the peak ``learner.lr``.

    Linear warmup over the first ``warmup`` updates, from 1/warmup to 1; then ``constant`` at 1,
    or ``linear`` / ``cosine`` decay from 1 to ``min_ratio`` at update ``total`` (held there after):
        linear: min + (1 - min) * (1 - progress),
        cosine: min + (1 - min) * (1 + cos(pi * progress)) / 2   (Loshchilov & Hutter 2017, SGDR),
    with progress = (step - warmup) / (total - warmup) in [0, 1].
    """

    kind: str
    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        decay = 1 - progress if self.kind == "linear" else (1 + math.cos(math.pi * progress)) / 2
        return self.min_ratio + (1 - self.min_ratio) * decay


def lr_schedule(cfg: LearnerConfig) -> LRSchedule:
    """The schedule ``learner.lr_scheduler``/``warmup_*``/``min_lr_ratio``/``lr_schedule_steps`` describe."""
    if cfg.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"learner.lr_scheduler={cfg.lr_scheduler!r} is not one of {LR_SCHEDULERS}")
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * cfg.lr_schedule_steps)
    return LRSchedule(cfg.lr_scheduler, warmup, cfg.lr_schedule_steps, cfg.min_lr_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: LearnerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_schedule`; step it once per learner update. Its state
    (the update count) goes into checkpoints; the schedule itself comes from the config (a plain
    function, which ``LambdaLR`` leaves out of its state)."""
    schedule = lr_schedule(cfg)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))


def autocast(cfg: LearnerConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward passes' precision context: bfloat16 autocast with ``learner.mixed_precision=bf16``
    (parameters, gradients and optimizer state stay float32), else nothing."""
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"learner.mixed_precision={cfg.mixed_precision!r} is not one of {MIXED_PRECISION}")
    if cfg.mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
