"""Learner and engine on the tiny model, in-process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, RolloutConfig, SamplingConfig
from rlft.learner.batch import Sample, collate
from rlft.learner.learner import Learner
from rlft.rollout.worker import RolloutWorker


@pytest.fixture(scope="module")
def samples(tiny_model_dir: Path) -> list[Sample]:
    worker = RolloutWorker(ModelConfig(path=str(tiny_model_dir)), RolloutConfig())
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    groups = worker.generate(prompts, 4, SamplingConfig(max_new_tokens=6), seed=0)
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(0)).tolist()
    flat = [(i, p, c) for i, (p, g) in enumerate(zip(prompts, groups, strict=True)) for c in g]
    return [
        Sample(p, c.token_ids, c.logprobs, r, i, c.policy_version)
        for (i, p, c), r in zip(flat, rewards, strict=True)
    ]


def _learner(tiny_model_dir: Path, **learner_kwargs: float) -> Learner:
    algo = AlgorithmConfig(beta=0.1)
    return Learner(
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(lr=1e-2, **learner_kwargs),
        algo,
        SamplingConfig(),
        seed=0,
    )


def test_engine_logprobs_match_learner(tiny_model_dir: Path, samples: list[Sample]) -> None:
    """The engine reports the same per-token logprobs the learner computes for the same weights."""
    learner = _learner(tiny_model_dir)
    recomputed = learner.completion_logprobs(samples)
    for sample, row in zip(samples, recomputed, strict=True):
        assert torch.allclose(torch.tensor(sample.sampler_logprobs), torch.tensor(row), atol=1e-4)


def test_micro_batches_give_the_same_update_as_one_batch(tiny_model_dir: Path, samples: list[Sample]) -> None:
    """Gradient accumulation over 4 micro-batches equals one batch (the loss is normalised over the
    whole mini-batch). SGD with lr 1 makes the weight change equal to the gradient; Adam's first
    step would blow float noise in near-zero gradients up to +-lr."""
    one = _learner(tiny_model_dir, per_device_samples_per_micro_batch=12)
    four = _learner(tiny_model_dir, per_device_samples_per_micro_batch=3)
    before = {k: v.clone() for k, v in one.get_weights().tensors.items()}
    for learner in (one, four):
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=1.0)
    _assert_same_step(one, four, samples, before, rtol=1e-4, atol=1e-7)
    w1 = one.get_weights().tensors
    assert any(g.abs().max() > 1e-4 for g in (before[n] - w1[n] for n in w1))


def _assert_same_step(
    a: Learner, b: Learner, batch: list[Sample], before: dict[str, torch.Tensor], rtol: float, atol: float
) -> None:
    """One train_step of each on ``batch`` gives the same metrics and the same weight change from
    ``before`` (with SGD at lr 1: the same gradient), to the given tolerance."""
    ma, mb = a.train_step(batch), b.train_step(batch)
    for key in ("loss/policy", "kl", "entropy", "grad_norm"):
        assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), key
    wa, wb = a.get_weights().tensors, b.get_weights().tensors
    for name in wa:
        assert torch.allclose(before[name] - wa[name], before[name] - wb[name], rtol=rtol, atol=atol), name


def test_compiled_learner_gives_the_eager_update(tiny_model_dir: Path, samples: list[Sample]) -> None:
    """learner.compile=true (compiled decoder layers, compiled LM-head chunks; entropy and KL
    terms on) gives the eager learner's metrics and gradients (SGD: weight change = gradient),
    over two steps, the second with new sequence lengths."""
    eager, compiled = _learner(tiny_model_dir), _learner(tiny_model_dir, compile=True)
    assert compiled.model.model.layers[0]._compiled_call_impl is not None
    for learner in (eager, compiled):
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=1.0)
        learner.algo = replace(learner.algo, entropy_coef=0.01)
    for batch in (samples, samples[:5]):
        before = {k: v.clone() for k, v in eager.get_weights().tensors.items()}
        _assert_same_step(eager, compiled, batch, before, rtol=1e-3, atol=1e-6)


def test_train_step_metrics_and_version(tiny_model_dir: Path, samples: list[Sample]) -> None:
    learner = _learner(tiny_model_dir, global_samples_per_optimizer_step=6)
    before = {k: v.clone() for k, v in learner.get_weights().tensors.items()}
    metrics = learner.train_step(samples)  # two optimizer steps: old logprobs are recomputed
    assert metrics["policy_version"] == 1 and metrics["staleness"] == 0
    assert metrics["clip_frac"] >= 0 and metrics["kl"] >= 0
    after = learner.get_weights()
    assert after.version == 1
    assert any(not torch.equal(before[k], after.tensors[k]) for k in before)
    stale = [replace(s, policy_version=0) for s in samples]
    assert learner.train_step(stale)["staleness"] == 1


def test_collate_aligns_completion_tokens() -> None:
    batch = collate(
        [Sample([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], 1.0, 0, 0), Sample([6], [7], [-0.5], None, 1, 0)], 0
    )
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert batch.completion_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert batch.sampler_logprobs[0, 2:].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    assert batch.rewards[0] == 1.0 and batch.rewards[1].isnan() and batch.group_ids.tolist() == [0, 1]
    assert len(batch.select(slice(1, 2))) == 1 and batch.select(slice(1, 2)).input_ids.shape == (1, 2)


def test_nonfinite_loss_skips_the_update_and_too_many_stop_the_run(
    tiny_model_dir: Path, samples: list[Sample]
) -> None:
    learner = _learner(tiny_model_dir, max_skipped_updates=1)
    before = {k: v.clone() for k, v in learner.get_weights().tensors.items()}
    loss_fn = learner.policy_loss

    def nan_loss(*args, **kwargs):
        per_token, info = loss_fn(*args, **kwargs)
        return per_token * float("nan"), info

    learner.policy_loss = nan_loss
    assert learner.train_step(samples)["skipped_updates"] == 1
    after = learner.get_weights().tensors
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN update must not touch the weights"
    with pytest.raises(RuntimeError, match=r"learner\.max_skipped_updates=1"):
        learner.train_step(samples)
