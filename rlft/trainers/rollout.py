"""Steps 1-3 of an online RL step: draw prompts, generate a group of completions for each on the
rollout workers, score them. Also the pipeline that runs these ahead of the learner
(``trainer.async``).

Generation is load-balanced: the prompts are cut into chunks of ``rollout.prompts_per_chunk``
and each chunk goes to whichever rollout worker is free first (:meth:`Cluster.pull_map`); a
chunk's seed depends only on its position, so the completions do not depend on which worker
generated them, and they come back in prompt order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlft.algorithms import groups_with_signal, overlong_penalty
from rlft.cluster import Cluster
from rlft.config import RLFTConfig, SamplingConfig
from rlft.data.prompts import PromptSampler, tokenize_prompts
from rlft.learner.batch import Sample
from rlft.rewards import RewardManager
from rlft.rollout.agents import agent_spec
from rlft.rollout.engine import Completion
from rlft.rollout.episode import Episode
from rlft.rollout.generate import chunk_size, generate
from rlft.rollout.worker import EpisodeSettings

log = logging.getLogger("rlft.trainer")

IN_FLIGHT_FILE = "rollouts_in_flight.pt"
"""In an async run's checkpoint: the rollouts already generated for the steps after it."""


@dataclass
class RolloutContext:
    """What a rollout needs, gathered once per session (the actors change after a restart)."""

    cfg: RLFTConfig
    cluster: Cluster
    workers: list[Any]
    sampler: PromptSampler
    rewards: RewardManager | None
    tokenizer: Any
    reward_model: Any | None


@dataclass
class Rollout:
    """Scored groups: ``len(prompts)`` prompts with G completions each, stored group-major (agents:
    any number per prompt, ``sample_groups``)."""

    group_size: int
    prompts: list[str]
    prompt_ids: list[list[int]]
    completions: list[Completion]
    rewards: torch.Tensor
    """[len(prompts) * G]; NaN = no reward function had an opinion."""
    reward_metrics: dict[str, float]
    timings: dict[str, float]
    sampler_state: dict[str, Any] = field(default_factory=dict)
    """The prompt sampler's state right after this rollout drew its prompts: what a checkpoint of
    the step that trains on it stores (later rollouts may already be drawing, with trainer.async)."""
    reward_columns: dict[str, list[float | None]] = field(default_factory=dict)
    """Each reward function's value per sample (by its metric name), for samples.jsonl."""
    episodes: list[Episode] | None = None
    """Multi-turn rollouts (``env.path``): the episode behind each of ``completions`` (whose
    ``token_ids`` are then the episode's completion ids and ``text`` its last assistant message)."""
    sample_groups: list[int] | None = None
    """Per sample, its group (prompt index) where groups differ in size (agents: one episode can
    make several trajectories, a failed one none); None = group-major, G samples per prompt."""

    def group_of(self) -> list[int]:
        """Each sample's group: the index of its prompt."""
        if self.sample_groups is not None:
            return self.sample_groups
        return [i // self.group_size for i in range(len(self.completions))]

    def groups(self, keep: torch.Tensor) -> Rollout:
        """Only the groups where ``keep`` (one bool per group) is true."""
        kept = keep.nonzero().flatten().tolist()
        renumber = {old: new for new, old in enumerate(kept)}
        owner = self.group_of()
        samples = [i for i, group in enumerate(owner) if group in renumber]
        return Rollout(
            self.group_size,
            [self.prompts[i] for i in kept],
            [self.prompt_ids[i] for i in kept],
            [self.completions[i] for i in samples],
            self.rewards[samples],
            self.reward_metrics,
            self.timings,
            self.sampler_state,
            {name: [values[i] for i in samples] for name, values in self.reward_columns.items()},
            None if self.episodes is None else [self.episodes[i] for i in samples],
            None if self.sample_groups is None else [renumber[owner[i]] for i in samples],
        )

    def extend(self, other: Rollout) -> Rollout:
        """This rollout's groups, then ``other``'s (timings summed; reward metrics and sampler
        state of ``other``)."""
        timings = {k: self.timings.get(k, 0.0) + v for k, v in other.timings.items()}
        uneven = self.sample_groups is not None or other.sample_groups is not None
        return Rollout(
            self.group_size,
            self.prompts + other.prompts,
            self.prompt_ids + other.prompt_ids,
            self.completions + other.completions,
            torch.cat([self.rewards, other.rewards]),
            other.reward_metrics,
            timings,
            other.sampler_state,
            {name: v + other.reward_columns.get(name, []) for name, v in self.reward_columns.items()},
            None if self.episodes is None else self.episodes + other.episodes,
            self.group_of() + [len(self.prompts) + j for j in other.group_of()] if uneven else None,
        )

    def samples(self) -> list[Sample]:
        groups = self.group_of()
        if self.episodes is not None:
            return [
                replace(e.to_sample(group), reward=r)
                for group, e, r in zip(groups, self.episodes, self.rewards.tolist(), strict=True)
            ]
        return [
            Sample(self.prompt_ids[group], c.token_ids, c.logprobs, r, group, c.policy_version)
            for group, c, r in zip(groups, self.completions, self.rewards.tolist(), strict=True)
        ]

    def staleness(self, learner_version: int) -> torch.Tensor:
        """Per sample: how many policy versions the learner is ahead of the weights that generated it."""
        return torch.tensor(
            [learner_version - c.policy_version for c in self.completions], dtype=torch.float32
        )

    def metrics(self, step_s: float) -> dict[str, float]:
        lengths = torch.tensor([len(c.token_ids) for c in self.completions], dtype=torch.float32)
        tokens = lengths.sum().item() + self.group_size * sum(map(len, self.prompt_ids))
        if self.episodes is not None:  # the model's tokens; the environment's come on top
            tokens = sum(len(e.prompt_ids) + len(e.completion_ids) for e in self.episodes)
            lengths = torch.tensor([e.num_model_tokens for e in self.episodes], dtype=torch.float32)
        valid = self.rewards[~self.rewards.isnan()]
        stats = {
            **self.reward_metrics,
            **self.timings,
            "reward/none_frac": 1 - len(valid) / len(self.rewards),
            "response_len/mean": lengths.mean().item(),
            "response_len/max": lengths.max().item(),
            "response/truncated_frac": sum(c.finish_reason == "length" for c in self.completions)
            / len(lengths),
            "throughput/tokens_per_s": tokens / step_s,
        }
        if len(valid):
            stats["reward/mean"] = valid.mean().item()
            stats["reward/std"] = valid.std().item() if len(valid) > 1 else 0.0
        if self.episodes is not None:
            stats |= episode_metrics(self.episodes)
        return stats

    def sample_rows(
        self, n: int, token_stats: list[dict[str, list[float]]] | None = None, tokenizer: Any = None
    ) -> list[dict[str, Any]]:
        """The first ``n`` completions, for samples.jsonl: prompt, completion, combined reward, each
        reward function's value (``rewards``), the sample's group and index in the step.

        With ``token_stats`` (the learner's :meth:`~rlft.learner.learner.Learner.token_stats` of
        these samples) each row also holds its completion ``tokens`` (each decoded alone with
        ``tokenizer``) and, per token, the sampler's log-probability beside the learner's values.
        Episodes (``env.path``) are rows of their messages instead, without token statistics."""
        if self.episodes is not None:
            return self._episode_rows(n)
        rows = []
        for i, (c, r) in enumerate(zip(self.completions[:n], self.rewards[:n].tolist(), strict=True)):
            row = {
                "prompt": self.prompts[i // self.group_size],
                "completion": c.text,
                "reward": r,
                "rewards": {name: values[i] for name, values in self.reward_columns.items()},
                "group": i // self.group_size,
                "index": i,
                "finish_reason": c.finish_reason,
                "policy_version": c.policy_version,
            }
            if token_stats is not None:
                row["tokens"] = [tokenizer.decode([t]) for t in c.token_ids]
                row["token_stats"] = {"sampler_logprob": _rounded(c.logprobs), **token_stats[i]}
            rows.append(row)
        return rows

    def _episode_rows(self, n: int) -> list[dict[str, Any]]:
        groups = self.group_of()
        return [
            {
                "messages": e.messages,
                "reward": r,
                "rewards": {name: values[i] for name, values in self.reward_columns.items()},
                "turn_rewards": [None if t != t else t for t in e.turn_rewards],  # NaN: none given
                "group": groups[i],
                "index": i,
                "num_turns": e.num_turns,
                "finish_reason": e.finish_reason,
                "error": e.error,
                "policy_version": e.policy_version,
            }
            for i, (e, r) in enumerate(zip(self.episodes[:n], self.rewards[:n].tolist(), strict=True))
        ]


def _rounded(values: list[float]) -> list[float]:
    """Four decimals: plenty for colouring tokens, and about half the bytes of full floats."""
    return [round(v, 4) for v in values]


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Means over episodes: turns, tokens, truncation, errors, per-turn rewards, step time, and
    every count the environment reported (``Step.metrics``: tool calls, tool errors, ...)."""
    n = len(episodes)
    counts: dict[str, float] = {}
    for e in episodes:
        for name, value in e.stats.items():
            counts[name] = counts.get(name, 0.0) + value
    turn_rewards = [r for e in episodes for r in e.turn_rewards if r == r]
    metrics = {f"env/{name}": total / n for name, total in counts.items()}
    metrics |= {
        "env/turns_mean": sum(e.num_turns for e in episodes) / n,
        "env/turns_max": float(max(e.num_turns for e in episodes)),
        "env/episode_tokens_mean": sum(len(e.prompt_ids) + len(e.completion_ids) for e in episodes) / n,
        "env/truncated_frac": sum(e.finish_reason == "max_tokens" for e in episodes) / n,
        "env/max_turns_frac": sum(e.finish_reason == "max_turns" for e in episodes) / n,
    }
    if "step_s" in counts:
        steps = sum(e.num_turns for e in episodes)
        metrics["env/step_s_mean"] = counts["step_s"] / max(steps, 1)
        del metrics["env/step_s"]
    if turn_rewards:
        metrics["env/turn_reward_mean"] = sum(turn_rewards) / len(turn_rewards)
    return metrics


class SamplerState:
    """A prompt sampler's saved position, standing in for the sampler when a checkpoint is written."""

    def __init__(self, state: dict[str, Any]):
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


class RolloutPipeline:
    """Hands out each step's rollout; with ``depth > 0`` (``trainer.async``) the rollouts of the
    next ``depth`` steps are collected in a background thread while the learner trains.

    :meth:`next` for step k first starts the rollouts up to step k + depth, then waits for step
    k's. The rollout of step j is thus started during step j - depth, after the weights of
    version j - 1 - depth were sent; actors run one call at a time, so each of its generate calls
    runs with that version or a newer one, and the learner trains on it at version j - 1: at most
    ``depth`` versions stale. In local mode the rollouts are collected in the calling thread when
    they are started (same staleness, no overlap). ``depth = 0`` collects each step's rollout when
    it is asked for (synchronous training).

    A checkpoint after step k holds the rollouts started for steps k + 1 .. k + depth
    (:meth:`save`, :meth:`restore`): a resumed run trains on the very samples, generated by the
    same older weights, that the uninterrupted run trains on. The last ``depth`` steps start
    rollouts past ``trainer.max_steps`` too, for the final checkpoint: a run continued beyond
    its end (a larger ``trainer.max_steps``) then also trains as if it had never stopped.
    """

    def __init__(self, collect: Callable[[int], Rollout], depth: int, threaded: bool):
        self._collect, self.depth = collect, depth
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rollout") if threaded and depth else None
        self._pending: deque[tuple[int, Future[Rollout]]] = deque()

    def next(self, step: int) -> tuple[Rollout, float]:
        """Step ``step``'s rollout and the seconds spent waiting for it."""
        start = time.perf_counter()
        if not self._pending:
            self._pending.append((step, self._start(step)))
        while self._pending[-1][0] < step + self.depth:
            self._pending.append((self._pending[-1][0] + 1, self._start(self._pending[-1][0] + 1)))
        pending_step, future = self._pending.popleft()
        assert pending_step == step, (pending_step, step)
        rollout = future.result()
        return rollout, time.perf_counter() - start

    def _start(self, step: int) -> Future[Rollout]:
        if self._executor is not None:
            return self._executor.submit(self._collect, step)
        future: Future[Rollout] = Future()
        future.set_result(self._collect(step))
        return future

    def save(self, directory: Path) -> None:
        """Write the rollouts started for later steps into ``directory`` (a checkpoint being
        written), once they are complete; nothing without any (synchronous training)."""
        if not self._pending:
            return
        rollouts = [(step, future.result()) for step, future in self._pending]
        torch.save({"max_staleness": self.depth, "rollouts": rollouts}, directory / IN_FLIGHT_FILE)

    def restore(self, checkpoint: Path, sampler: PromptSampler) -> None:
        """Take back the rollouts ``checkpoint`` holds for the steps after it (:meth:`save`), and
        move ``sampler`` past their prompts. With another ``trainer.max_staleness`` (or without
        ``trainer.async``) they are dropped: the sampler stays at the checkpoint's own step, and
        those steps' prompts are drawn again and generated with the resumed weights."""
        path = checkpoint / IN_FLIGHT_FILE
        if not path.is_file():
            return
        state = torch.load(path, weights_only=False)  # written by save: Rollout objects
        steps = [step for step, _ in state["rollouts"]]
        if state["max_staleness"] != self.depth:
            log.warning(
                "%s holds the rollouts of steps %s, generated ahead with trainer.max_staleness=%d; "
                "this run has %s, so they are generated again",
                checkpoint,
                steps,
                state["max_staleness"],
                f"trainer.max_staleness={self.depth}" if self.depth else "trainer.async=false",
            )
            return
        for step, rollout in state["rollouts"]:
            future: Future[Rollout] = Future()
            future.set_result(rollout)
            self._pending.append((step, future))
        sampler.load_state_dict(self._pending[-1][1].result().sampler_state)

    def close(self) -> None:
        """Drop the rollouts not yet used and wait for the background thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


def collect(ctx: RolloutContext, step: int) -> Rollout:
    """Steps 1-3 of the loop, repeated for DAPO dynamic sampling until enough groups have signal."""
    cfg = ctx.cfg
    want = cfg.data.global_prompts_per_step
    dynamic = cfg.algorithm.dynamic_sampling
    collected = None
    for round_ in range(dynamic.max_rounds if dynamic.enabled else 1):
        rollout = rollout_round(ctx, want, seed=(cfg.trainer.seed * 1_000_003 + step) * 100 + round_)
        kept = rollout
        if dynamic.enabled:
            group_ids = torch.tensor(rollout.group_of(), dtype=torch.long)
            signal = torch.zeros(len(rollout.prompts), dtype=torch.bool)
            signal[group_ids[groups_with_signal(rollout.rewards, group_ids)]] = True
            kept = rollout.groups(signal)
        collected = kept if collected is None else collected.extend(kept)
        if len(collected.prompts) >= want:
            break
    if not collected.prompts:  # no group had signal in any round: train on the last (zero advantages)
        collected = collected.extend(rollout)
    collected = collected.groups(torch.arange(len(collected.prompts)) < want)
    if dynamic.enabled:
        collected.reward_metrics["dynamic_sampling/rounds"] = float(round_ + 1)
    return collected


def rollout_round(ctx: RolloutContext, n: int, seed: int) -> Rollout:
    """Draw ``n`` prompts, generate a group for each, score every completion."""
    cfg, g = ctx.cfg, ctx.cfg.algorithm.group_size
    start = time.perf_counter()
    rows = ctx.sampler.sample(n)
    sampler_state = ctx.sampler.state_dict()
    prompts = [row[cfg.data.prompt_column] for row in rows]
    if cfg.env.path is not None:
        return _episode_round(ctx, rows, seed, start, sampler_state)
    if agent_spec(cfg.agent) is not None:
        from rlft.trainers.agent_rollout import agent_round

        return agent_round(ctx, rows, seed, start, sampler_state)
    prompt_ids = tokenize_prompts(ctx.tokenizer, prompts, cfg.data, cfg.model.max_prompt_tokens)
    groups = generate(
        ctx.cluster, ctx.workers, prompt_ids, g, cfg.rollout.sampling, seed, cfg.rollout.prompts_per_chunk
    )
    completions = [c for group in groups for c in group]
    rollout_s = time.perf_counter() - start

    start = time.perf_counter()
    columns = {k: [row[k] for row in rows for _ in range(g)] for k in ctx.sampler.columns}
    columns.pop(cfg.data.prompt_column)
    rewards, metrics, per_function = score(ctx, [p for p in prompts for _ in range(g)], completions, columns)
    timings = {"timing/rollout_s": rollout_s, "timing/reward_s": time.perf_counter() - start}
    return Rollout(
        g,
        prompts,
        prompt_ids,
        completions,
        rewards,
        metrics,
        timings,
        sampler_state,
        reward_columns=per_function,
    )


def _episode_round(
    ctx: RolloutContext, rows: list[dict[str, Any]], seed: int, start: float, sampler_state: dict[str, Any]
) -> Rollout:
    """:func:`rollout_round` with an environment: G episodes of each row, scored by the
    environment's rewards plus the reward functions on each episode's last assistant message."""
    cfg, g = ctx.cfg, ctx.cfg.algorithm.group_size
    settings = episode_settings(cfg)
    groups = play_episodes(
        ctx.cluster, ctx.workers, rows, g, cfg.rollout.sampling, seed, settings, cfg.rollout.prompts_per_chunk
    )
    episodes = [e for group in groups for e in group]
    rollout_s = time.perf_counter() - start

    start = time.perf_counter()
    completions = [episode_completion(e) for e in episodes]
    openings = [_opening_text(e) for e in episodes]
    env_rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    rewards, metrics, per_function = env_rewards, {}, {}
    if ctx.rewards is not None or ctx.reward_model is not None or cfg.algorithm.overlong_buffer_len > 0:
        columns = {k: [row[k] for row in rows for _ in range(g)] for k in ctx.sampler.columns}
        columns.pop(cfg.data.prompt_column)
        scored, metrics, per_function = score(ctx, openings, completions, columns)
        both = torch.stack([env_rewards, scored])
        rewards = torch.where(both.isnan().all(0), float("nan"), both.nan_to_num(0.0).sum(0))
        failed = torch.tensor([e.finish_reason in ("error", "timeout") for e in episodes])
        rewards = torch.where(failed, env_rewards, rewards)
    timings = {"timing/rollout_s": rollout_s, "timing/reward_s": time.perf_counter() - start}
    prompt_ids = [groups[i][0].prompt_ids for i in range(len(rows))]
    prompts = [row[cfg.data.prompt_column] for row in rows]
    return Rollout(
        g, prompts, prompt_ids, completions, rewards, metrics, timings, sampler_state, per_function, episodes
    )


def episode_settings(cfg: RLFTConfig) -> EpisodeSettings:
    from rlft.trainers.online import PROJECT_ROOT

    return EpisodeSettings(cfg.env, (PROJECT_ROOT,), cfg.data.prompt_column, cfg.data.system_prompt)


def episode_completion(e: Episode) -> Completion:
    """An episode as a Completion: its completion ids and log-probs, its last assistant message."""
    last = next((m["content"] for m in reversed(e.messages) if m.get("role") == "assistant"), "")
    return Completion(e.completion_ids, e.sampler_logprobs, last, e.finish_reason, e.policy_version)


def _opening_text(e: Episode) -> str:
    """The episode's first user message (the prompt reward functions see)."""
    return next((m["content"] for m in e.messages if m.get("role") == "user"), "")


def play_episodes(
    cluster: Cluster,
    workers: list[Any],
    rows: list[dict[str, Any]],
    n: int,
    sampling: SamplingConfig,
    seed: int,
    settings: EpisodeSettings,
    rows_per_chunk: int = 0,
) -> list[list[Episode]]:
    """``n`` episodes of each row, in row order, load-balanced over the workers like :func:`generate`."""
    size = chunk_size(len(rows), len(workers), rows_per_chunk)
    chunks = [(i, rows[lo : lo + size]) for i, lo in enumerate(range(0, len(rows), size))]
    results = cluster.pull_map(
        workers,
        lambda w, chunk: w.run_episodes.remote(chunk[1], n, sampling, seed * 1_000 + chunk[0], settings),
        chunks,
    )
    return [group for result in results for group in result]


def score(
    ctx: RolloutContext, prompts: list[str], completions: list[Completion], columns: dict[str, list]
) -> tuple[torch.Tensor, dict[str, float], dict[str, list[float | None]]]:
    """Reward functions' weighted sum + weighted reward-model score + DAPO overlong shaping; also
    each part's value per sample (reward functions by name, ``model``, ``overlong_penalty``)."""
    texts = [c.text for c in completions]
    rewards = torch.full((len(texts),), float("nan"))
    metrics: dict[str, float] = {}
    per_function: dict[str, list[float | None]] = {}
    if ctx.rewards is not None:
        scores, metrics, per_function = ctx.rewards.score_per_function(prompts, texts, columns)
        rewards = torch.tensor(scores, dtype=torch.float32)
    if ctx.reward_model is not None:
        rm = torch.tensor(ctx.cluster.get(ctx.reward_model.score.remote(prompts, texts)), dtype=torch.float32)
        metrics["reward/model/mean"] = rm.mean().item()
        per_function["model"] = rm.tolist()
        rewards = torch.nan_to_num(rewards, nan=0.0) + ctx.cfg.reward.model.weight * rm
    algo = ctx.cfg.algorithm
    if algo.overlong_buffer_len > 0:
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        penalty = overlong_penalty(
            lengths, ctx.cfg.rollout.sampling.max_new_tokens, algo.overlong_buffer_len, algo.overlong_penalty
        )
        metrics["reward/overlong_penalty/mean"] = penalty.mean().item()
        per_function["overlong_penalty"] = penalty.tolist()
        rewards = rewards + penalty
    return rewards, metrics, per_function
