"""Training samples and their collation into padded tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Sample:
    """One prompt + completion with its reward, ready for the policy update."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    """The rollout engine's log-probability of each completion token."""
    reward: float
    """Outcome reward (NaN = no reward function had an opinion)."""
    group_id: int
    """Samples of the same prompt share a group id (the advantage baseline is per group)."""
    policy_version: int
    """Version of the weights that generated the completion."""


@dataclass
class Batch:
    """Right-padded tensors; per-token columns ([N, L]) are aligned with ``input_ids``.

    The optional columns are filled in by the learner before the update.
    """

    input_ids: torch.Tensor
    """[N, L] prompt then completion tokens, then padding."""
    attention_mask: torch.Tensor
    """[N, L] 1 on real tokens."""
    completion_mask: torch.Tensor
    """[N, L] float, 1 on completion tokens (the ones the loss trains)."""
    sampler_logprobs: torch.Tensor
    """[N, L] the engine's log-probability of each completion token (0 elsewhere)."""
    rewards: torch.Tensor
    """[N] outcome rewards."""
    group_ids: torch.Tensor
    """[N] group of each sample."""
    advantages: torch.Tensor | None = None
    """[N, L] per-token advantages."""
    returns: torch.Tensor | None = None
    """[N, L] value targets (PPO critic)."""
    old_logprobs: torch.Tensor | None = None
    """[N, L] log-probabilities under the policy before this step's updates."""
    ref_logprobs: torch.Tensor | None = None
    """[N, L] log-probabilities under the reference model."""
    old_values: torch.Tensor | None = None
    """[N, L] critic values before this step's updates."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: slice | torch.Tensor) -> Batch:
        """The rows at ``index``, trimmed to their longest sequence."""
        width = int(self.attention_mask[index].sum(-1).max())
        return replace(self, **{f.name: _rows(getattr(self, f.name), index, width) for f in fields(self)})

    def to(self, device: torch.device) -> Batch:
        return replace(self, **{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


def _rows(t: torch.Tensor | None, index: slice | torch.Tensor, width: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t[index][:, :width] if t.dim() == 2 else t[index]


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def collate(samples: list[Sample], pad_token_id: int) -> Batch:
    """Pad samples to one [N, L] batch."""
    width = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    n = len(samples)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width))
    sampler_logprobs = torch.zeros((n, width))
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, : p + c] = torch.tensor(s.prompt_ids + s.completion_ids)
        attention_mask[i, : p + c] = 1
        completion_mask[i, p : p + c] = 1
        sampler_logprobs[i, p : p + c] = torch.tensor(s.sampler_logprobs)
    rewards = torch.tensor([math.nan if s.reward is None else s.reward for s in samples], dtype=torch.float32)
    group_ids = torch.tensor([s.group_id for s in samples], dtype=torch.long)
    return Batch(input_ids, attention_mask, completion_mask, sampler_logprobs, rewards, group_ids)
