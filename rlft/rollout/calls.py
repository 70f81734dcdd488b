"""From an agent's recorded endpoint calls to training episodes: the merge rule.

Each request an agent makes to the endpoint is recorded as a :class:`Call`: the exact prompt token
ids the engine was given, the token ids it sampled and their sampler log-probabilities. An agent
episode usually makes several calls. The rule that turns them into :class:`Episode` records is a
token rule, applied to the calls in the order they were made:

- a call whose prompt ids **start with** an earlier trajectory's prompt + completion ids (the
  usual chat loop: the previous conversation, the model's reply, new messages) **extends** that
  trajectory (the newest such one): the new prompt tokens after the shared prefix enter with loss
  mask 0, the call's sampled tokens with loss mask 1 and their log-probabilities;
- any other call (the agent rewrote its history, summarised, started a sub-agent, sampled two
  answers to one prompt) **starts a trajectory of its own**.

Every trajectory of an episode becomes one Episode with the episode's reward. Nothing the model
produced is ever re-tokenized: the chat endpoint itself renders a conversation that continues an
earlier call as that call's exact tokens plus the chat template's delta (see
:mod:`rlft.rollout.endpoint`), which is what makes the prefix rule hold in a chat loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlft.rollout.episode import Episode


@dataclass
class Call:
    """One completion the endpoint returned for one request of an episode."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    finish_reason: str
    """OpenAI's: ``stop`` | ``length`` | ``tool_calls``."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Chat calls: the request's messages (normalised) and, last, the reply the endpoint returned."""
    text: str = ""
    """The completion's text as returned."""


@dataclass
class MergeStats:
    """How an episode's calls became trajectories."""

    calls: int = 0
    merged: int = 0
    """Calls that extended an earlier trajectory."""
    trajectories: int = 0
    """Episodes made (1 + the calls that had to start a trajectory of their own, when any call)."""


def calls_to_episodes(calls: list[Call], reward: float = math.nan) -> tuple[list[Episode], MergeStats]:
    """The episodes the merge rule (module docstring) makes of ``calls``, each with ``reward``."""
    episodes: list[Episode] = []
    stats = MergeStats(calls=len(calls))
    for call in calls:
        target = next((ep for ep in reversed(episodes) if _extends(call.prompt_ids, ep)), None)
        if target is None:
            episodes.append(
                Episode(
                    prompt_ids=list(call.prompt_ids),
                    completion_ids=list(call.completion_ids),
                    loss_mask=[1] * len(call.completion_ids),
                    sampler_logprobs=list(call.sampler_logprobs),
                    messages=list(call.messages),
                    reward=reward,
                    num_turns=1,
                )
            )
            continue
        delta = call.prompt_ids[len(target.prompt_ids) + len(target.completion_ids) :]
        target.completion_ids += delta + call.completion_ids
        target.loss_mask += [0] * len(delta) + [1] * len(call.completion_ids)
        target.sampler_logprobs += [0.0] * len(delta) + list(call.sampler_logprobs)
        target.messages = list(call.messages) or target.messages
        target.num_turns += 1
        stats.merged += 1
    stats.trajectories = len(episodes)
    return episodes, stats


def _extends(prompt_ids: list[int], episode: Episode) -> bool:
    """Whether ``prompt_ids`` starts with the episode's prompt + completion ids."""
    n, m = len(episode.prompt_ids), len(episode.completion_ids)
    return (
        len(prompt_ids) >= n + m
        and prompt_ids[:n] == episode.prompt_ids
        and prompt_ids[n : n + m] == episode.completion_ids
    )
