"""The generation-engine interface every rollout backend implements (hf, vllm)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from rlft.config import SamplingConfig


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    token_ids: list[int]
    """Generated tokens, ending with the EOS token when generation stopped on it."""
    logprobs: list[float]
    """The sampler's log-probability of each generated token (at the sampling temperature)."""
    text: str
    """Decoded completion, special tokens removed, ending after the first stop string if any."""
    finish_reason: str
    """``stop`` (EOS or a stop string reached) or ``length`` (hit max_new_tokens)."""
    policy_version: int = 0
    """Version of the weights that generated it (set by the RolloutWorker)."""


def cut_at_stop(text: str, stop: list[str]) -> str:
    """``text`` up to the end of the first stop string that occurs in it (unchanged if none does)."""
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return text[: min(ends)] if ends else text


class Engine(Protocol):
    """What a RolloutWorker needs from a generation backend."""

    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt (given as token ids), in prompt order."""
        ...

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Replace the model's parameters in place (no reload)."""
        ...

    def load_named_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy these (name, tensor) pairs into the model's parameters in place; returns bytes.
        Consecutive calls form one weight update, until :meth:`finish_update` (or a generate)."""
        ...

    def finish_update(self) -> None:
        """Close the weight update that :meth:`load_named_tensors` calls began: the next call
        starts a new one. The receiver calls it once a whole set of weights has arrived."""
        ...

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The parameters the engine generates with (on the CPU); for tests and checks."""
        ...

    def sleep(self, level: int = 1) -> None:
        """Colocation (cluster.colocate): release device memory while the learner trains; level 1
        keeps the weights (in host memory), level 2 drops them (the next weight sync refills them)."""
        ...

    def wake_up(self) -> None:
        """Colocation: take the memory back before the weight sync and the next generate."""
        ...
