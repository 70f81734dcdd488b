"""Training samples and their collation into padded tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sample:
    """One prompt + completion, scored, ready for the policy update."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    """The rollout engine's log-probability of each completion token."""
    advantage: float
    policy_version: int
    """Version of the weights that generated the completion."""


@dataclass
class Batch:
    """Right-padded tensors; per-token columns are aligned with ``input_ids``."""

    input_ids: torch.Tensor
    """[N, L] prompt then completion tokens, then padding."""
    attention_mask: torch.Tensor
    """[N, L] 1 on real tokens."""
    completion_mask: torch.Tensor
    """[N, L] float, 1 on completion tokens (the ones the loss trains)."""
    sampler_logprobs: torch.Tensor
    """[N, L] the engine's log-probability of each completion token (0 elsewhere)."""
    advantages: torch.Tensor
    """[N] one advantage per sample."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: slice | torch.Tensor) -> Batch:
        """The rows at ``index``, trimmed to their longest sequence."""
        width = int(self.attention_mask[index].sum(-1).max())
        return Batch(*(t[index][:, :width] if t.dim() == 2 else t[index] for t in vars(self).values()))

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in vars(self).values()))


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
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return Batch(input_ids, attention_mask, completion_mask, sampler_logprobs, advantages)
