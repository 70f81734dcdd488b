"""A multi-turn episode as the learner trains it: the exact tokens the model saw and produced.

Produced by the environment loop (``env.path``) and by the OpenAI-compatible endpoint (``agent.path``);
both hand the learner the same record. The sequence is ``prompt_ids + completion_ids``; the loss
trains only the completion tokens whose ``loss_mask`` is 1, the ones the model sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlft.learner.batch import Sample


@dataclass
class Episode:
    """One episode (or, for an agent whose calls do not chain, one call of it)."""

    prompt_ids: list[int]
    """The opening render: the chat template over the opening messages, with the generation prompt."""
    completion_ids: list[int]
    """Every token after the prompt, in order: the model's tokens as sampled (never re-tokenized) and
    the environment's messages as the chat template renders them after the previous turn."""
    loss_mask: list[int]
    """Per completion token: 1 = sampled by the model (trained), 0 = environment / template tokens."""
    sampler_logprobs: list[float]
    """Per completion token: the sampler's log-probability where ``loss_mask`` is 1, 0.0 elsewhere."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The conversation with roles (and tool calls), for samples.jsonl and people."""
    reward: float = math.nan
    """The episode's outcome reward (NaN = no opinion)."""
    turn_rewards: list[float] = field(default_factory=list)
    """Per-turn rewards the environment gave, in turn order (may be empty)."""
    num_turns: int = 0
    """Assistant turns generated."""
    finish_reason: str = "done"
    """``done`` | ``max_turns`` | ``max_tokens`` | ``error`` | ``timeout``."""
    error: str | None = None
    """What went wrong when ``finish_reason`` is ``error`` or ``timeout``."""
    policy_version: int = 0
    """The oldest policy version that generated any of its model tokens."""
    stats: dict[str, float] = field(default_factory=dict)
    """Per-episode counts for metrics (tool calls, tool errors, environment step seconds, ...)."""

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if len(self.loss_mask) != n or len(self.sampler_logprobs) != n:
            raise ValueError(
                f"Episode: completion_ids ({n}), loss_mask ({len(self.loss_mask)}) and "
                f"sampler_logprobs ({len(self.sampler_logprobs)}) must have one entry per token"
            )

    @property
    def num_model_tokens(self) -> int:
        """Tokens the model sampled (the ones the loss trains)."""
        return sum(self.loss_mask)

    def to_sample(self, group_id: int) -> Sample:
        """The learner's view of the episode: one sequence ``prompt_ids + completion_ids`` whose
        loss covers the model's tokens only (``loss_mask``), scored against the sampler's
        log-probs there; ``reward`` is the advantage estimators' outcome reward. Episodes of one
        dataset row share ``group_id`` (the group baseline of GRPO, RLOO, ...)."""
        return Sample(
            self.prompt_ids,
            self.completion_ids,
            self.sampler_logprobs,
            self.reward,
            group_id,
            self.policy_version,
            loss_mask=self.loss_mask,
        )
