"""The online RL step loop (GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++, PPO). Read
:func:`train` top to bottom to know what a step does.

The driver holds no model weights: it draws prompts, asks the rollout workers for completions,
scores them (reward functions here, a reward model on its own actor), hands the scored samples
to the learner, which computes advantages and updates the policy, and moves the new weights to
the rollout workers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rlft.algorithms import groups_with_signal, overlong_penalty
from rlft.cluster import Cluster
from rlft.config import RLFTConfig
from rlft.data.prompts import PromptSampler, tokenize_prompts
from rlft.learner.batch import Sample
from rlft.learner.group import LearnerGroup
from rlft.learner.learner import Learner
from rlft.modeling import load_tokenizer
from rlft.rewards import RewardManager
from rlft.rewards.model_worker import RewardModelWorker
from rlft.rollout.engine import Completion
from rlft.rollout.worker import RolloutWorker
from rlft.tracking import make_trackers
from rlft.trainers import checkpoint
from rlft.weights import make_transport

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""Reward-function paths like ``rewards/synthetic.py:fn`` also resolve against the rlft checkout."""


def train(cfg: RLFTConfig) -> Path:
    """Run ``cfg.trainer.max_steps`` RL steps; returns the run directory."""
    run_dir = Path(cfg.trainer.output_dir)
    sampler, rewards, tokenizer, resume_from = _prepare(cfg, run_dir)
    checkpoint.create_run_dir(cfg)  # only once the input is known to be good

    with Cluster(cfg.cluster) as cluster:
        learner, workers = start_workers(cluster, cfg)
        run = _Run(cfg, cluster, workers, sampler, rewards, tokenizer, _start_reward_model(cluster, cfg))
        transport = make_transport(cfg.weights.transport, cfg.weights.bucket_mb, local=cluster.local)
        start_step = checkpoint.resume(run_dir, resume_from, learner, sampler)
        transport.sync(cluster, learner, workers)

        with make_trackers(cfg.tracking, run_dir, cfg.trainer.max_steps, start_step, asdict(cfg)) as trackers:
            for step in range(start_step + 1, cfg.trainer.max_steps + 1):
                step_start = time.perf_counter()

                # 1-3. Draw B prompts, generate G completions of each on the rollout workers and
                # score them. DAPO dynamic sampling drops groups whose rewards are all equal and
                # draws more prompts until B groups carry a learning signal.
                rollout = _collect(run, step)

                # 4. Update the policy on the learner; it computes the advantages (a pure function
                # of rewards, groups and, for PPO, its critic's values) and the loss.
                learner_metrics = learner.train_step(rollout.samples())

                # 5. Send the new weights to every rollout worker.
                sync_metrics = transport.sync(cluster, learner, workers)

                step_s = time.perf_counter() - step_start
                metrics = {
                    **rollout.metrics(step_s),
                    **learner_metrics,
                    **sync_metrics,
                    "timing/step_s": step_s,
                }
                trackers.log(metrics, step)
                trackers.log_samples(rollout.sample_rows(cfg.tracking.samples_per_step), step)

                checkpoint.save_if_due(cfg.trainer, run_dir, step, learner, sampler)
    return run_dir


class SetupError(RuntimeError):
    """Bad input found before any worker started: a path, a column, a reward function."""


def _prepare(cfg: RLFTConfig, run_dir: Path) -> tuple[PromptSampler, RewardManager | None, Any, Path | None]:
    """Everything that can fail on bad input, checked before any actor starts."""
    try:
        sampler = PromptSampler(cfg.data, cfg.trainer.seed)
        rewards = None
        if cfg.reward.functions:
            rewards = RewardManager(
                cfg.reward.functions,
                cfg.reward.weights or None,
                cfg.reward.failure_reward,
                search_dirs=[PROJECT_ROOT],
            )
            rewards.check_columns(c for c in sampler.columns if c != cfg.data.prompt_column)
        tokenizer = load_tokenizer(cfg.model)
        return sampler, rewards, tokenizer, checkpoint.checkpoint_to_resume(cfg.trainer.resume, run_dir)
    except (OSError, ValueError, TypeError, ImportError, AttributeError) as err:
        raise SetupError(str(err)) from err


def start_workers(cluster: Cluster, cfg: RLFTConfig) -> tuple[LearnerGroup, list[Any]]:
    """``learner.num_workers`` data-parallel learners and ``rollout.num_workers`` rollout workers,
    each with its own resources."""
    lc, rc = cfg.learner, cfg.rollout
    learner = LearnerGroup(
        cluster,
        Learner,
        cfg.model,
        lc,
        cfg.algorithm,
        rc.sampling,
        cfg.trainer.seed,
        cluster.threads(lc.num_cpus_per_worker),
        num_workers=lc.num_workers,
        num_cpus=lc.num_cpus_per_worker,
        num_gpus=lc.num_gpus_per_worker,
        samples_per_optimizer_step=lc.global_samples_per_optimizer_step,
    )
    workers = [
        cluster.spawn(
            RolloutWorker,
            cfg.model,
            rc,
            cluster.threads(rc.num_cpus_per_worker),
            num_cpus=rc.num_cpus_per_worker,
            num_gpus=rc.num_gpus_per_worker,
        )
        for _ in range(rc.num_workers)
    ]
    return learner, workers


def _start_reward_model(cluster: Cluster, cfg: RLFTConfig) -> Any | None:
    rm = cfg.reward.model
    if rm.path is None:
        return None
    return cluster.spawn(
        RewardModelWorker,
        rm,
        cfg.model.dtype,
        cluster.threads(rm.num_cpus),
        num_cpus=rm.num_cpus,
        num_gpus=rm.num_gpus,
    )


@dataclass
class _Run:
    """What a rollout needs, gathered once."""

    cfg: RLFTConfig
    cluster: Cluster
    workers: list[Any]
    sampler: PromptSampler
    rewards: RewardManager | None
    tokenizer: Any
    reward_model: Any | None


@dataclass
class Rollout:
    """Scored groups: ``len(prompts)`` prompts with G completions each, stored group-major."""

    group_size: int
    prompts: list[str]
    prompt_ids: list[list[int]]
    completions: list[Completion]
    rewards: torch.Tensor
    """[len(prompts) * G]; NaN = no reward function had an opinion."""
    reward_metrics: dict[str, float]
    timings: dict[str, float]

    def groups(self, keep: torch.Tensor) -> Rollout:
        """Only the groups where ``keep`` (one bool per group) is true."""
        g = self.group_size
        kept = keep.nonzero().flatten().tolist()
        samples = [i * g + j for i in kept for j in range(g)]
        return Rollout(
            g,
            [self.prompts[i] for i in kept],
            [self.prompt_ids[i] for i in kept],
            [self.completions[i] for i in samples],
            self.rewards[samples],
            self.reward_metrics,
            self.timings,
        )

    def extend(self, other: Rollout) -> Rollout:
        """This rollout's groups, then ``other``'s (timings summed; reward metrics of ``other``)."""
        timings = {k: self.timings.get(k, 0.0) + v for k, v in other.timings.items()}
        return Rollout(
            self.group_size,
            self.prompts + other.prompts,
            self.prompt_ids + other.prompt_ids,
            self.completions + other.completions,
            torch.cat([self.rewards, other.rewards]),
            other.reward_metrics,
            timings,
        )

    def samples(self) -> list[Sample]:
        g = self.group_size
        return [
            Sample(self.prompt_ids[i // g], c.token_ids, c.logprobs, r, i // g, c.policy_version)
            for i, (c, r) in enumerate(zip(self.completions, self.rewards.tolist(), strict=True))
        ]

    def metrics(self, step_s: float) -> dict[str, float]:
        lengths = torch.tensor([len(c.token_ids) for c in self.completions], dtype=torch.float32)
        tokens = lengths.sum().item() + self.group_size * sum(map(len, self.prompt_ids))
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
        return stats

    def sample_rows(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` completions, for samples.jsonl."""
        return [
            {
                "prompt": self.prompts[i // self.group_size],
                "completion": c.text,
                "reward": r,
                "policy_version": c.policy_version,
            }
            for i, (c, r) in enumerate(zip(self.completions[:n], self.rewards[:n].tolist(), strict=True))
        ]


def _collect(run: _Run, step: int) -> Rollout:
    """Steps 1-3 of the loop, repeated for DAPO dynamic sampling until enough groups have signal."""
    cfg = run.cfg
    want = cfg.data.global_prompts_per_step
    dynamic = cfg.algorithm.dynamic_sampling
    collected = None
    for round_ in range(dynamic.max_rounds if dynamic.enabled else 1):
        rollout = _rollout_round(run, want, seed=(cfg.trainer.seed * 1_000_003 + step) * 100 + round_)
        kept = rollout
        if dynamic.enabled:
            group_ids = torch.arange(len(rollout.prompts)).repeat_interleave(rollout.group_size)
            signal = groups_with_signal(rollout.rewards, group_ids).view(-1, rollout.group_size)[:, 0]
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


def _rollout_round(run: _Run, n: int, seed: int) -> Rollout:
    """Draw ``n`` prompts, generate a group for each, score every completion."""
    cfg, g = run.cfg, run.cfg.algorithm.group_size
    start = time.perf_counter()
    rows = run.sampler.sample(n)
    prompts = [row[cfg.data.prompt_column] for row in rows]
    prompt_ids = tokenize_prompts(run.tokenizer, prompts, cfg.data, cfg.model.max_prompt_tokens)
    completions = [c for group in _generate(run, prompt_ids, seed) for c in group]
    rollout_s = time.perf_counter() - start

    start = time.perf_counter()
    columns = {k: [row[k] for row in rows for _ in range(g)] for k in run.sampler.columns}
    columns.pop(cfg.data.prompt_column)
    rewards, metrics = _score(run, [p for p in prompts for _ in range(g)], completions, columns)
    timings = {"timing/rollout_s": rollout_s, "timing/reward_s": time.perf_counter() - start}
    return Rollout(g, prompts, prompt_ids, completions, rewards, metrics, timings)


def _generate(run: _Run, prompt_ids: list[list[int]], seed: int) -> list[list[Completion]]:
    """Split the prompts evenly across the workers; concatenate their groups in prompt order."""
    share = -(-len(prompt_ids) // len(run.workers))
    chunks = [prompt_ids[i * share : (i + 1) * share] for i in range(len(run.workers))]
    g, sampling = run.cfg.algorithm.group_size, run.cfg.rollout.sampling
    calls = [
        w.generate.remote(c, g, sampling, seed * 1_000 + i)
        for i, (w, c) in enumerate(zip(run.workers, chunks, strict=True))
        if c
    ]
    return [group for result in run.cluster.get(calls) for group in result]


def _score(
    run: _Run, prompts: list[str], completions: list[Completion], columns: dict[str, list]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward functions' weighted sum + weighted reward-model score + DAPO overlong shaping."""
    texts = [c.text for c in completions]
    rewards = torch.full((len(texts),), float("nan"))
    metrics: dict[str, float] = {}
    if run.rewards is not None:
        scores, metrics = run.rewards.score(prompts, texts, columns)
        rewards = torch.tensor(scores, dtype=torch.float32)
    if run.reward_model is not None:
        rm = torch.tensor(run.cluster.get(run.reward_model.score.remote(prompts, texts)), dtype=torch.float32)
        metrics["reward/model/mean"] = rm.mean().item()
        rewards = torch.nan_to_num(rewards, nan=0.0) + run.cfg.reward.model.weight * rm
    algo = run.cfg.algorithm
    if algo.overlong_buffer_len > 0:
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        penalty = overlong_penalty(
            lengths, run.cfg.rollout.sampling.max_new_tokens, algo.overlong_buffer_len, algo.overlong_penalty
        )
        metrics["reward/overlong_penalty/mean"] = penalty.mean().item()
        rewards = rewards + penalty
    return rewards, metrics
