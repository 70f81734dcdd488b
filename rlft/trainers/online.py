"""The online RL step loop (GRPO family). Read :func:`train` top to bottom to know what a step does.

The driver holds no model weights: it draws prompts, asks the rollout workers for completions,
scores them with the reward functions, turns rewards into advantages (a pure function), hands
the samples to the learner, and moves the new weights to the rollout workers.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rlft.algorithms import get_advantage
from rlft.cluster import Cluster, threads_for
from rlft.config import RLFTConfig
from rlft.data.prompts import PromptSampler, tokenize_prompts
from rlft.learner.batch import Sample
from rlft.learner.learner import Learner
from rlft.modeling import load_tokenizer
from rlft.rewards import RewardManager
from rlft.rollout.engine import Completion
from rlft.rollout.worker import RolloutWorker
from rlft.tracking import make_trackers
from rlft.trainers import checkpoint
from rlft.weights import ObjectStoreTransport

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""Reward-function paths like ``rewards/synthetic.py:fn`` also resolve against the rlft checkout."""


def train(cfg: RLFTConfig) -> Path:
    """Run ``cfg.trainer.max_steps`` RL steps; returns the run directory."""
    run_dir = Path(cfg.trainer.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

    sampler, rewards, tokenizer, resume_from = _prepare(cfg, run_dir)
    advantage_fn = get_advantage(cfg.algorithm.advantage)
    group_size = cfg.algorithm.group_size

    with Cluster(cfg.cluster) as cluster:
        learner, workers = start_workers(cluster, cfg)
        transport = ObjectStoreTransport()
        start_step = 0
        if resume_from is not None:
            state = checkpoint.read_trainer_state(resume_from)
            cluster.get(learner.load_checkpoint.remote(str(resume_from)))
            sampler.load_state_dict(state["sampler"])
            start_step = state["step"]
        for log in ("metrics.jsonl", "samples.jsonl"):
            checkpoint.truncate_jsonl(run_dir / log, start_step)
        transport.sync(cluster, learner, workers)

        config_dict = asdict(cfg)
        with make_trackers(cfg.tracking, run_dir, cfg.trainer.max_steps, start_step, config_dict) as trackers:
            for step in range(start_step + 1, cfg.trainer.max_steps + 1):
                step_start = time.perf_counter()

                # 1. Draw B prompts; each becomes a group of G samples.
                rows = sampler.sample(cfg.data.global_prompts_per_step)
                prompts = [row[cfg.data.prompt_column] for row in rows]
                prompt_ids = tokenize_prompts(tokenizer, prompts, cfg.data, cfg.model.max_prompt_tokens)

                # 2. Generate on the rollout workers (prompts split evenly, results in prompt order).
                groups = _generate(
                    cluster, workers, prompt_ids, cfg, seed=cfg.trainer.seed * 1_000_003 + step
                )
                completions = [c for group in groups for c in group]
                rollout_s = time.perf_counter() - step_start

                # 3. Score every completion with the reward functions.
                reward_start = time.perf_counter()
                columns = {k: [row[k] for row in rows for _ in range(group_size)] for k in sampler.columns}
                columns.pop(cfg.data.prompt_column)
                scores, reward_metrics = rewards.score(
                    [p for p in prompts for _ in range(group_size)], [c.text for c in completions], columns
                )
                reward_s = time.perf_counter() - reward_start

                # 4. Advantages: a pure function of the rewards and the group structure.
                reward_tensor = torch.tensor(scores, dtype=torch.float32)
                group_ids = torch.arange(len(prompts)).repeat_interleave(group_size)
                advantages = advantage_fn(reward_tensor, group_ids, norm_by_std=cfg.algorithm.norm_adv_by_std)

                # 5. Update the policy on the learner.
                samples = [
                    Sample(prompt_ids[i // group_size], c.token_ids, c.logprobs, float(a), c.policy_version)
                    for i, (c, a) in enumerate(zip(completions, advantages.tolist(), strict=True))
                ]
                learner_metrics = cluster.get(learner.train_step.remote(samples))

                # 6. Send the new weights to every rollout worker.
                sync_metrics = transport.sync(cluster, learner, workers)

                step_s = time.perf_counter() - step_start
                metrics = {
                    **_reward_stats(reward_tensor),
                    **reward_metrics,
                    **learner_metrics,
                    **sync_metrics,
                    **_rollout_stats(prompt_ids, completions, group_size, step_s),
                    "timing/rollout_s": rollout_s,
                    "timing/reward_s": reward_s,
                    "timing/step_s": step_s,
                }
                trackers.log(metrics, step)
                trackers.log_samples(_sample_rows(prompts, completions, scores, cfg), step)

                every = cfg.trainer.checkpoint_every
                if step == cfg.trainer.max_steps or (every and step % every == 0):
                    checkpoint.save_checkpoint(
                        run_dir,
                        step,
                        {"sampler": sampler.state_dict()},
                        lambda d: cluster.get(learner.save_checkpoint.remote(str(d))),
                        keep=cfg.trainer.keep_checkpoints,
                    )
    return run_dir


class SetupError(RuntimeError):
    """Bad input found before any worker started: a path, a column, a reward function."""


def _prepare(cfg: RLFTConfig, run_dir: Path) -> tuple[PromptSampler, RewardManager, Any, Path | None]:
    """Everything that can fail on bad input, checked before any actor starts."""
    try:
        sampler = PromptSampler(cfg.data, cfg.trainer.seed)
        rewards = RewardManager(
            cfg.reward.functions,
            cfg.reward.weights or None,
            cfg.reward.failure_reward,
            search_dirs=[PROJECT_ROOT],
        )
        rewards.check_columns(c for c in sampler.columns if c != cfg.data.prompt_column)
        tokenizer = load_tokenizer(cfg.model)
        return sampler, rewards, tokenizer, _checkpoint_to_resume(cfg, run_dir)
    except (OSError, ValueError, TypeError, ImportError, AttributeError) as err:
        raise SetupError(str(err)) from err


def start_workers(cluster: Cluster, cfg: RLFTConfig) -> tuple[Any, list[Any]]:
    """One learner and ``rollout.num_workers`` rollout workers, each with its own resources."""

    def threads(num_cpus: float) -> int:
        return 0 if cluster.local else threads_for(num_cpus)

    lc, rc = cfg.learner, cfg.rollout
    learner = cluster.spawn(
        Learner,
        cfg.model,
        lc,
        cfg.algorithm,
        rc.sampling,
        cfg.trainer.seed,
        threads(lc.num_cpus_per_worker),
        num_cpus=lc.num_cpus_per_worker,
        num_gpus=lc.num_gpus_per_worker,
    )
    workers = [
        cluster.spawn(
            RolloutWorker,
            cfg.model,
            rc,
            threads(rc.num_cpus_per_worker),
            num_cpus=rc.num_cpus_per_worker,
            num_gpus=rc.num_gpus_per_worker,
        )
        for _ in range(rc.num_workers)
    ]
    return learner, workers


def _generate(
    cluster: Cluster, workers: list[Any], prompt_ids: list[list[int]], cfg: RLFTConfig, seed: int
) -> list[list[Completion]]:
    """Split the prompts evenly across the workers; concatenate their groups in prompt order."""
    share = -(-len(prompt_ids) // len(workers))
    calls = [
        w.generate.remote(
            prompt_ids[i * share : (i + 1) * share],
            cfg.algorithm.group_size,
            cfg.rollout.sampling,
            seed * 1_000 + i,
        )
        for i, w in enumerate(workers)
        if prompt_ids[i * share : (i + 1) * share]
    ]
    return [group for result in cluster.get(calls) for group in result]


def _reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    valid = rewards[~rewards.isnan()]
    if len(valid) == 0:
        return {"reward/none_frac": 1.0}
    return {
        "reward/mean": valid.mean().item(),
        "reward/std": valid.std().item() if len(valid) > 1 else 0.0,
        "reward/max": valid.max().item(),
        "reward/min": valid.min().item(),
        "reward/none_frac": 1 - len(valid) / len(rewards),
    }


def _rollout_stats(
    prompt_ids: list[list[int]], completions: list[Completion], group_size: int, step_s: float
) -> dict[str, float]:
    lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
    tokens = lengths.sum().item() + group_size * sum(map(len, prompt_ids))
    return {
        "response_len/mean": lengths.mean().item(),
        "response_len/max": lengths.max().item(),
        "response/truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "throughput/tokens_per_s": tokens / step_s,
    }


def _sample_rows(
    prompts: list[str], completions: list[Completion], scores: list[float], cfg: RLFTConfig
) -> list[dict[str, Any]]:
    """The first completions of the step, for samples.jsonl."""
    group_size = cfg.algorithm.group_size
    return [
        {
            "prompt": prompts[i // group_size],
            "completion": c.text,
            "reward": s,
            "policy_version": c.policy_version,
        }
        for i, (c, s) in enumerate(zip(completions, scores, strict=True))
    ][: cfg.tracking.samples_per_step]


def _checkpoint_to_resume(cfg: RLFTConfig, run_dir: Path) -> Path | None:
    resume = cfg.trainer.resume
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoint.latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"trainer.resume={resume!r} is not a checkpoint directory (no trainer_state.json)"
        )
    return path
