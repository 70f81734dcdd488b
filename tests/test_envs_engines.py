"""Multi-turn episodes on the real engines (hf in-process, vLLM CPU in a Ray actor): what the engine
saw each turn is the episode's sequence so far, and the learner's log-probs of the model's tokens
match the sampler's (``logprob_diff/sampler`` small), unlike when the environment's tokens are
wrongly scored as the model's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_vllm_engine import vllm_actors

from rlft.config import AlgorithmConfig, EnvConfig, LearnerConfig, ModelConfig, RolloutConfig, SamplingConfig
from rlft.learner.batch import Sample
from rlft.learner.learner import Learner
from rlft.rollout.episode import Episode
from rlft.rollout.worker import EpisodeSettings, RolloutWorker

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": "", "answer": str(d)} for d in (3, 8)]
SETTINGS = EpisodeSettings(
    EnvConfig(
        path="envs/guess.py:GuessEnv", params={"feedback": "reveal"}, max_turns=3, max_episode_tokens=100
    ),
    (ROOT,),
)
SAMPLING = SamplingConfig(max_new_tokens=6)


def _samples(groups: list[list[Episode]]) -> tuple[list[Sample], list[Sample]]:
    """Each episode as its Sample (rewards alternating so that advantages are nonzero), and as a
    wrong one without the loss mask (environment tokens scored as sampled, with log-prob 0)."""
    right = [
        replace(e.to_sample(i), reward=float(j % 2)) for i, g in enumerate(groups) for j, e in enumerate(g)
    ]
    return right, [replace(s, loss_mask=None) for s in right]


def _model_logprob_gap(samples: list[Sample], recomputed: list[list[float]]) -> float:
    gaps = []
    for s, row in zip(samples, recomputed, strict=True):
        sampled = [lp for lp, m in zip(s.sampler_logprobs, s.loss_mask, strict=True) if m]
        assert len(sampled) == len(row)
        gaps += [abs(a - b) for a, b in zip(sampled, row, strict=True)]
    return sum(gaps) / len(gaps)


def test_hf_episodes_are_what_the_engine_saw_and_sampled(tiny_model_dir: Path) -> None:
    worker = RolloutWorker(ModelConfig(path=str(tiny_model_dir)), RolloutConfig(engine="hf"))
    seen: list[list[list[int]]] = []
    generate = worker.engine.generate

    def recording(prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int):
        seen.append([list(p) for p in prompts])
        return generate(prompts, n, sampling, seed)

    worker.engine.generate = recording
    groups = worker.run_episodes(ROWS, 3, SAMPLING, 0, SETTINGS)
    episodes = [e for g in groups for e in g]
    assert all(e.num_turns >= 1 for e in episodes) and any(e.num_turns > 1 for e in episodes)
    for turn, prompts in enumerate(seen):  # every turn's prompt is a prefix of its episode's sequence
        live = [e for e in episodes if e.num_turns > turn]
        assert len(prompts) == len(live)
        for prompt, e in zip(prompts, live, strict=True):
            assert (e.prompt_ids + e.completion_ids)[: len(prompt)] == prompt
            assert prompt[len(e.prompt_ids) :] == e.completion_ids[: len(prompt) - len(e.prompt_ids)]

    learner = Learner(
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(lr=0.0),
        AlgorithmConfig(),
        SamplingConfig(),
        seed=0,
    )
    right, wrong = _samples(groups)
    assert _model_logprob_gap(right, learner.completion_logprobs(right)) < 1e-4
    good = learner.train_step(right)["logprob_diff/sampler"]
    bad = learner.train_step(wrong)["logprob_diff/sampler"]
    assert good < 1e-4 and bad > 0.5, (good, bad)


def test_vllm_episodes_match_the_learner(tiny_model_dir: Path) -> None:
    """vLLM (CPU) plays the episodes in its Ray actor; the learner recomputes its log-probs."""
    with vllm_actors(tiny_model_dir) as (cluster, learner, worker):
        groups = cluster.get(worker.run_episodes.remote(ROWS, 3, SAMPLING, 0, SETTINGS))
        episodes = [e for g in groups for e in g]
        assert any(e.num_turns > 1 for e in episodes)
        assert all(sum(e.loss_mask) < len(e.completion_ids) for e in episodes if e.num_turns > 1)
        right, wrong = _samples(groups)
        gap = _model_logprob_gap(right, cluster.get(learner.completion_logprobs.remote(right)))
        good = learner.train_step(right)["logprob_diff/sampler"]
        bad = learner.train_step(wrong)["logprob_diff/sampler"]
        assert gap < 1e-4 and good < 1e-4 and bad > 0.5, (gap, good, bad)


@pytest.mark.parametrize("engine", ["hf"])
def test_episode_seeds_reproduce(tiny_model_dir: Path, engine: str) -> None:
    worker = RolloutWorker(ModelConfig(path=str(tiny_model_dir)), RolloutConfig(engine=engine))
    a = worker.run_episodes(ROWS, 2, SAMPLING, 5, SETTINGS)
    b = worker.run_episodes(ROWS, 2, SAMPLING, 5, SETTINGS)
    assert [e.completion_ids for g in a for e in g] == [e.completion_ids for g in b for e in g]
    assert torch.tensor([len(e.messages) for g in a for e in g]).min() >= 2
