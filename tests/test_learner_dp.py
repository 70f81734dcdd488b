"""Data-parallel learners: the batch split across ranks, and 2 learner actors (real Ray, gloo on
the CPU) giving the same update as 1 learner on the whole batch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from rlft.cluster import Cluster
from rlft.config import AlgorithmConfig, ClusterConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.learner.batch import Sample
from rlft.learner.group import LearnerGroup, split_by_tokens
from rlft.learner.learner import Learner


def test_split_by_tokens_balances_each_mini_batch() -> None:
    lengths = [30, 5, 5, 5, 5, 5, 5, 10, 20, 1, 1, 8]
    shards = split_by_tokens(lengths, world_size=2, mini_batch_size=7)
    # Mini-batch 1 (rows 0-6): 30 | 6 x 5; mini-batch 2 (rows 7-11): 20 | 10 + 8 + 1 + 1.
    assert [s.indices for s in shards] == [[0, 8], [1, 2, 3, 4, 5, 6, 7, 9, 10, 11]]
    assert [s.mini_batch_sizes for s in shards] == [[1, 1], [6, 4]]
    # Every row exactly once, each rank's rows in batch order, mini-batch k's rows inside it.
    assert sorted(i for s in shards for i in s.indices) == list(range(len(lengths)))
    for s in shards:
        assert s.indices == sorted(s.indices) and s.total == len(lengths)
        lo = 0
        for k, size in enumerate(s.mini_batch_sizes):
            assert all(7 * k <= i < 7 * (k + 1) for i in s.indices[lo : lo + size])
            lo += size


def test_split_by_tokens_needs_a_row_per_rank() -> None:
    with pytest.raises(ValueError, match=r"learner\.num_workers"):
        split_by_tokens([3, 4, 5], world_size=2, mini_batch_size=1)


def _random_samples(n: int, groups: int, seed: int) -> list[Sample]:
    """Samples of varied lengths; the groups straddle the two optimizer steps' mini-batches."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(5, 200) for _ in range(rng.randint(2, 9))]
        completion = [rng.randrange(5, 200) for _ in range(rng.randint(1, 12))]
        logprobs = [-rng.random() * 3 for _ in completion]
        out.append(Sample(prompt, completion, logprobs, rng.random(), i * groups // n, 0))
    return out


def _configs(tiny_model_dir: Path) -> tuple[Any, ...]:
    return (
        ModelConfig(path=str(tiny_model_dir)),
        # Two optimizer steps per RL step (so old log-probs are recomputed), micro-batches of 2.
        LearnerConfig(lr=1.0, global_samples_per_optimizer_step=8, per_device_samples_per_micro_batch=2),
        AlgorithmConfig(beta=0.1),  # GRPO with a k3 KL term against the reference
        SamplingConfig(max_new_tokens=12),
        0,  # seed
        1,  # threads
    )


def _sgd_learner() -> type:
    """The learner with plain SGD (lr 1): the weight change is minus the clipped gradient, so equal
    weights mean equal gradients (Adam's first step would turn float noise in near-zero gradients
    into +-lr). Defined here, not at module level, so Ray ships it by value to its workers."""

    class SGDLearner(Learner):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.optimizer = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=1.0)

    return SGDLearner


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_learner_actors_match_one_learner(tiny_model_dir: Path, tmp_path: Path) -> None:
    cls = _sgd_learner()
    args = _configs(tiny_model_dir)
    batches = [_random_samples(16, 4, seed) for seed in (1, 2)]
    single = cls(*args)
    before = {k: v.clone() for k, v in single.get_weights().tensors.items()}
    expected = [single.train_step(batch) for batch in batches]
    after_one = single.get_weights().tensors

    with pytest.MonkeyPatch.context() as env:
        env.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on the CPU, also where a GPU exists
        with Cluster(ClusterConfig(mode="ray", num_cpus=2)) as cluster:
            group = LearnerGroup(cluster, cls, *args, num_workers=2, num_cpus=1, samples_per_optimizer_step=8)
            got = [group.train_step(batch) for batch in batches]
            rank0, rank1 = (cluster.get(r.get_weights.remote()).tensors for r in group.ranks)

            # The checkpoint of 2 ranks is one learner's: rank 0 writes it, any number loads it.
            group.save_checkpoint(str(tmp_path / "ckpt"))
            group.train_step(batches[0])
            group.load_checkpoint(str(tmp_path / "ckpt"))
            restored = [cluster.get(r.get_weights.remote()).tensors for r in group.ranks]

    for m1, m2 in zip(expected, got, strict=True):
        for key in ("loss/policy", "kl", "kl/seq", "entropy", "clip_frac", "grad_norm", "advantage/mean"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), key
        assert m2["policy_version"] == m1["policy_version"]
    step = _max_diff(before, after_one)
    assert step > 1e-3, "the updates changed (almost) nothing"
    assert _max_diff(rank0, rank1) == 0.0  # the replicas stay identical
    assert _max_diff(after_one, rank0) < 1e-5 * max(1.0, step)
    assert all(_max_diff(rank0, r) == 0.0 for r in restored)
    reloaded = cls(*args)
    reloaded.load_checkpoint(str(tmp_path / "ckpt"))
    assert _max_diff(reloaded.get_weights().tensors, rank0) == 0.0
    assert reloaded.policy_version == 2
