"""Steps 1-3 of an online RL step with an agent (``agent.path``, ``agent.verifiers``,
``agent.openenv``): G episodes of each drawn row run on the rollout workers against their
OpenAI-compatible endpoints; each episode's calls become one or more trajectories
(:mod:`rlft.rollout.calls`), all with the episode's reward, in the row's group.

The reward is what the agent returned; ``reward.functions`` are not used with an agent. Episodes
that failed count in ``agent/errors`` / ``agent/timeouts`` and train with ``agent.failure_reward``
(or not at all when it is None).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlft.rollout.agents import AgentEpisode
from rlft.trainers.rollout import Rollout, RolloutContext, chunk_size, episode_completion


def agent_round(
    ctx: RolloutContext, rows: list[dict[str, Any]], seed: int, start: float, sampler_state: dict[str, Any]
) -> Rollout:
    """:func:`rlft.trainers.rollout.rollout_round` with an agent."""
    from rlft.trainers.online import PROJECT_ROOT

    cfg, g = ctx.cfg, ctx.cfg.algorithm.group_size
    size = chunk_size(len(rows), len(ctx.workers), cfg.rollout.prompts_per_chunk)
    chunks = [(i, rows[lo : lo + size]) for i, lo in enumerate(range(0, len(rows), size))]
    results = ctx.cluster.pull_map(
        ctx.workers,
        lambda w, chunk: w.run_agents.remote(
            chunk[1], g, cfg.agent, cfg.rollout.sampling, seed * 1_000 + chunk[0], (PROJECT_ROOT,)
        ),
        chunks,
    )
    groups: list[list[AgentEpisode]] = [group for result in results for group in result]
    episodes = [e for group in groups for run in group for e in run.episodes]
    sample_groups = [i for i, group in enumerate(groups) for run in group for _ in run.episodes]
    if not episodes:
        first = next((run.error for group in groups for run in group if run.error), "no call was made")
        raise RuntimeError(
            f"no agent episode of this step left anything to train on (every one failed or made no "
            f"call); the first error: {first}"
        )
    rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    prompt_ids = [next((r.episodes[0].prompt_ids for r in group if r.episodes), []) for group in groups]
    prompts = [str(row.get(cfg.data.prompt_column, "")) for row in rows]
    timings = {"timing/rollout_s": time.perf_counter() - start, "timing/reward_s": 0.0}
    metrics = agent_metrics([run for group in groups for run in group])
    completions = [episode_completion(e) for e in episodes]
    return Rollout(
        g, prompts, prompt_ids, completions, rewards, metrics, timings, sampler_state,
        episodes=episodes, sample_groups=sample_groups,
    )  # fmt: skip


def agent_metrics(runs: list[AgentEpisode]) -> dict[str, float]:
    """Per agent episode means: calls, merges, trajectories, failures; and each named reward."""
    n = len(runs)
    metrics = {
        "agent/calls_mean": sum(r.merge.calls for r in runs) / n,
        "agent/merged_calls_mean": sum(r.merge.merged for r in runs) / n,
        "agent/trajectories_mean": sum(r.merge.trajectories for r in runs) / n,
        "agent/split_frac": sum(r.merge.trajectories > 1 for r in runs) / n,
        "agent/errors": float(sum(r.outcome == "error" for r in runs)),
        "agent/timeouts": float(sum(r.outcome == "timeout" for r in runs)),
        "agent/failed_frac": sum(r.outcome != "done" for r in runs) / n,
    }
    names = sorted({name for r in runs for name in r.named_rewards})
    for name in names:
        values = [r.named_rewards[name] for r in runs if name in r.named_rewards]
        metrics[f"reward/{name}/mean"] = sum(values) / len(values)
    return metrics
