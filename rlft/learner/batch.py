"""Training samples and their collation into padded tensors."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields, replace
from typing import Any

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
    loss_mask: list[int] | None = None
    """Per completion token: 1 = sampled by the model (trained), 0 = not the model's (an
    environment's or tool's message inside a multi-turn episode; its ``sampler_logprobs`` entry is
    ignored). None = every completion token is the model's."""

    def __post_init__(self) -> None:
        if self.loss_mask is not None and len(self.loss_mask) != len(self.completion_ids):
            raise ValueError(
                f"Sample: loss_mask has {len(self.loss_mask)} entries for {len(self.completion_ids)} "
                "completion tokens"
            )

    @property
    def num_model_tokens(self) -> int:
        """Completion tokens the model sampled (the ones the loss trains)."""
        return len(self.completion_ids) if self.loss_mask is None else sum(self.loss_mask)


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
    """[N, L] float, 1 on the completion tokens the model sampled (the ones the loss trains); 0 on
    the prompt, padding and, in multi-turn episodes, the environment's tokens between turns. Every
    log-prob, advantage, loss and KL term is taken over this mask only."""
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
        mask = torch.ones(c) if s.loss_mask is None else torch.tensor(s.loss_mask, dtype=torch.float32)
        completion_mask[i, p : p + c] = mask
        sampler_logprobs[i, p : p + c] = torch.tensor(s.sampler_logprobs, dtype=torch.float32) * mask
    rewards = torch.tensor([math.nan if s.reward is None else s.reward for s in samples], dtype=torch.float32)
    group_ids = torch.tensor([s.group_id for s in samples], dtype=torch.long)
    return Batch(input_ids, attention_mask, completion_mask, sampler_logprobs, rewards, group_ids)


def plan_micro_batches(
    lengths: list[int], max_samples: int, max_tokens: int = 0, packed: bool = False, unit: int = 1
) -> list[list[int]]:
    """Row indices of each micro-batch of a batch whose rows have ``lengths`` tokens.

    Rows go in units of ``unit`` consecutive rows that stay together (a chosen/rejected pair).
    ``max_tokens`` = 0: consecutive runs of ``max_samples`` rows, rounded down to whole units (at
    least one). ``max_tokens`` > 0: first-fit decreasing by token count. A micro-batch costs its
    total tokens when ``packed``, else its padded size (rows x longest row); units are placed
    longest first into the first micro-batch that stays within ``max_tokens``, and a unit over
    the budget on its own gets a micro-batch of its own. Indices within a micro-batch ascend.

    The losses are normalised over the whole mini-batch, so how rows are grouped changes only
    memory and speed, not the gradient.
    """
    if len(lengths) % unit:
        raise ValueError(f"{len(lengths)} rows do not split into units of {unit}")
    if max_tokens <= 0:
        rows = max(1, max_samples // unit) * unit
        return [list(range(lo, min(lo + rows, len(lengths)))) for lo in range(0, len(lengths), rows)]
    units = [list(range(lo, lo + unit)) for lo in range(0, len(lengths), unit)]

    def cost(rows: list[int]) -> int:
        sizes = [lengths[i] for i in rows]
        return sum(sizes) if packed else len(sizes) * max(sizes, default=0)

    bins: list[list[int]] = []
    for rows in sorted(units, key=cost, reverse=True):  # stable: ties keep their order
        fit = next((b for b in bins if cost(b + rows) <= max_tokens), None)
        if fit is None:
            bins.append(list(rows))
        else:
            fit.extend(rows)
    return [sorted(b) for b in bins]


@dataclass
class Packed:
    """The rows of a padded batch concatenated into one row without padding (sequence packing).

    Position ids restart at 0 for each sample, so rotary positions are those of the sample
    alone; ``forward_kwargs`` also carry the samples' boundaries (``cu_seq_lens``) for varlen
    attention kernels. With no 2D attention mask, transformers' sdpa/eager attention derives a
    block-diagonal causal mask from the restarting position ids, so attention never crosses
    samples (tests/test_packing.py checks packed == padded).
    """

    input_ids: torch.Tensor
    """[1, T] the samples' real tokens, one after another."""
    position_ids: torch.Tensor
    """[1, T] position of each token within its own sample."""
    completion_mask: torch.Tensor
    """[1, T] float, 1 on completion tokens."""
    cu_seq_lens: torch.Tensor
    """[n + 1] int32 cumulative sample lengths: sample i is tokens cu[i]:cu[i+1]."""
    max_length: int
    """Longest sample."""
    tokens: torch.Tensor
    """[n, L] bool: where in the padded batch each packed token came from."""

    def forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a transformers forward over the packed row (no attention mask)."""
        return {
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """[n, L] padded layout (0 on padding) of per-token ``values`` [1, T]; differentiable."""
        return values.new_zeros(self.tokens.shape).masked_scatter(self.tokens, values)


def pack(batch: Batch) -> Packed:
    """Pack the right-padded ``batch`` into one row (see :class:`Packed`). Every sample needs a
    prompt token: a completion token's log-probability is read from the position before it, which
    in a packed row would belong to the previous sample."""
    if batch.completion_mask[:, 0].any():
        raise ValueError("sequence packing needs a non-empty prompt in every sample (one had none)")
    tokens = batch.attention_mask.bool()
    lengths = tokens.sum(-1)
    positions = torch.cumsum(tokens, -1) - 1
    cu_seq_lens = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
    return Packed(
        input_ids=batch.input_ids[tokens][None],
        position_ids=positions[tokens][None],
        completion_mask=batch.completion_mask[tokens][None],
        cu_seq_lens=cu_seq_lens,
        max_length=int(lengths.max()),
        tokens=tokens,
    )


@dataclass
class SharedPromptRows:
    """Preference pairs with the prompt computed once (prefix sharing, as in Wang et al. 2024,
    "Accelerating Direct Preference Optimization with Prefix Sharing", arXiv 2410.20305).

    Row i holds pair i as ``prompt, chosen, p_last, rejected``, right-padded: ``p_last`` is a copy
    of the prompt's last token at the same position, so the rejected completion is read off the
    usual next-token shift. The attention mask (:meth:`attention_bias`) makes every token see
    exactly what it would see in its own sequence: the prompt, then its own completion; the copy
    sees the prompt without its last token, and itself, so its hidden states equal that token's.
    Positions restart after the chosen completion. Per token the log-probabilities therefore equal
    those of two separate rows (tests/test_preference_shared.py), at ``p + c + r + 1`` instead of
    ``2p + c + r`` tokens.
    """

    input_ids: torch.Tensor
    """[N, L] prompt, chosen, copy of the prompt's last token, rejected, padding."""
    position_ids: torch.Tensor
    """[N, L] position of each token in its own sequence (0 on padding)."""
    segments: torch.Tensor
    """[N, L] PROMPT, PROMPT_END (the prompt's last token), CHOSEN, REJECTED (the copy, then the
    rejected completion) or PAD."""

    PAD, PROMPT, PROMPT_END, CHOSEN, REJECTED = -1, 0, 1, 2, 3

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def attention_mask(self) -> torch.Tensor:
        """[N, L] 1 on real tokens (for micro-batch planning)."""
        return (self.segments != self.PAD).long()

    @property
    def score_mask(self) -> torch.Tensor:
        """[N, L] 1 on the completion tokens (the copied prompt token is not one)."""
        rejected = self.segments == self.REJECTED
        first_rejected = rejected & ~torch.nn.functional.pad(rejected[:, :-1], (1, 0))
        return ((self.segments == self.CHOSEN) | (rejected & ~first_rejected)).float()

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """[N, 1, L, L] which keys each query attends to: a bool mask for ``dtype=torch.bool``,
        else additive (0 or the dtype's minimum). Causal, and a token attends the prompt (the
        prompt's last token only from the chosen side), its own segment and nothing else."""
        q, k = self.segments[:, :, None], self.segments[:, None, :]
        allowed = (k == q) | (k == self.PROMPT) | ((q == self.CHOSEN) & (k == self.PROMPT_END))
        width = self.segments.shape[1]
        allowed &= torch.ones(width, width, dtype=torch.bool, device=allowed.device).tril()
        if dtype == torch.bool:
            return allowed[:, None]
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]

    def segment_index(self) -> dict[str, Any]:
        """The rows as two attention segments per pair, for a variable-length attention kernel
        (``rlft.attention._shared_prompt_attention``): flat token indices (row * L + column) of the
        queries and keys of each segment, one after another, their boundaries ``cu_q``/``cu_k``
        and longest lengths. Segment 1 is prompt + chosen over itself; segment 2 is the copy and the
        rejected completion, over the prompt without its last token and then itself."""
        width = self.segments.shape[1]
        counts = [(self.segments == s).sum(-1).tolist() for s in (self.PROMPT, self.CHOSEN, self.REJECTED)]
        queries, keys, q_lengths, k_lengths = [], [], [], []
        for i, (before_end, c, r) in enumerate(zip(*counts, strict=True)):
            first = torch.arange(before_end + 1 + c) + i * width  # prompt and chosen
            second = torch.arange(r) + i * width + len(first)  # copy and rejected
            queries += [first, second]
            keys += [first, first[:before_end], second]
            q_lengths += [len(first), r]
            k_lengths += [len(first), before_end + r]
        device = self.segments.device

        def bounds(lengths: list[int]) -> torch.Tensor:
            return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)

        return {
            "q_index": torch.cat(queries).to(device),
            "k_index": torch.cat(keys).to(device),
            "cu_q": bounds(q_lengths),
            "cu_k": bounds(k_lengths),
            "max_q": max(q_lengths),
            "max_k": max(k_lengths),
        }

    def per_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """[2N] sums of per-token ``values`` [N, L] over each completion: chosen, rejected, chosen, ..."""
        scored = values * self.score_mask
        chosen = (scored * (self.segments == self.CHOSEN)).sum(-1)
        rejected = (scored * (self.segments == self.REJECTED)).sum(-1)
        return torch.stack([chosen, rejected], -1).flatten()

    def select(self, index: slice | torch.Tensor) -> SharedPromptRows:
        """The rows at ``index``, trimmed to their longest."""
        width = int(self.attention_mask[index].sum(-1).max())
        return replace(self, **{f.name: getattr(self, f.name)[index][:, :width] for f in fields(self)})

    def to(self, device: torch.device) -> SharedPromptRows:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate_shared_prompt(
    pairs: list[tuple[list[int], list[int], list[int]]], pad_token_id: int
) -> SharedPromptRows:
    """(prompt, chosen, rejected) token ids of each pair in the :class:`SharedPromptRows` layout."""
    if any(not prompt for prompt, _, _ in pairs):
        raise ValueError(
            "learner.share_prompt needs a non-empty prompt in every preference pair (one had none): "
            "set learner.share_prompt=false"
        )
    width = max(len(p) + len(c) + 1 + len(r) for p, c, r in pairs)
    n = len(pairs)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segments = torch.full((n, width), SharedPromptRows.PAD, dtype=torch.long)
    for i, (p, c, r) in enumerate(pairs):
        pieces = [
            (p[:-1], range(len(p) - 1), SharedPromptRows.PROMPT),
            (p[-1:], [len(p) - 1], SharedPromptRows.PROMPT_END),
            (c, range(len(p), len(p) + len(c)), SharedPromptRows.CHOSEN),
            (p[-1:] + r, range(len(p) - 1, len(p) + len(r)), SharedPromptRows.REJECTED),
        ]
        lo = 0
        for ids, positions, segment in pieces:
            hi = lo + len(ids)
            input_ids[i, lo:hi] = torch.tensor(ids, dtype=torch.long)
            position_ids[i, lo:hi] = torch.tensor(list(positions), dtype=torch.long)
            segments[i, lo:hi] = segment
            lo = hi
    return SharedPromptRows(input_ids, position_ids, segments)
