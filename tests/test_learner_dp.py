"""Data-parallel learners: the batch split across ranks, and 2 learner actors (real Ray, gloo on
the CPU) giving the same update as 1 learner on the whole batch."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from rlft.cli import ConfigError, load_config
from rlft.cluster import Cluster
from rlft.config import AlgorithmConfig, ClusterConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.data.preference import PreferencePair, UnpairedExample
from rlft.learner.batch import Sample
from rlft.learner.group import LearnerGroup, split_by_tokens
from rlft.learner.learner import Learner, _load_weights
from rlft.learner.optim import build_scheduler
from rlft.learner.preference import PreferenceLearner


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


_LOCAL_L2 = ["learner.num_workers=2", "cluster.mode=local"]
_FSDP2 = ["learner.num_workers=2", "learner.strategy=fsdp2"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (_LOCAL_L2, r"needs one process per learner: use cluster\.mode=ray"),
        (["learner.strategy=zero3"], r"learner\.strategy='zero3' is not one of"),
        ([*_FSDP2, "weights.transport=collective"], r"fsdp2 works with weights\.transport=object_store"),
        (
            [*_FSDP2, "learner.compile=true"],
            r"learner\.compile=true is not supported with learner\.strategy=fsdp2",
        ),
    ],
)
def test_learner_group_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(["recipe=quickstart", *overrides])
    load_config(["recipe=quickstart", *_FSDP2])


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


def _configs(tiny_model_dir: Path, strategy: str = "dp") -> tuple[Any, ...]:
    # Two optimizer steps per RL step (so old log-probs are recomputed), micro-batches of 2 (the
    # ranks' shares differ in size, so under fsdp2 one rank runs extra passes to keep in step).
    learner = LearnerConfig(
        lr=1.0,
        global_samples_per_optimizer_step=8,
        per_device_samples_per_micro_batch=2,
        strategy=strategy,
    )
    return (
        ModelConfig(path=str(tiny_model_dir)),
        learner,
        AlgorithmConfig(beta=0.1),  # GRPO with a k3 KL term against the reference
        SamplingConfig(max_new_tokens=12),
        0,  # seed
        1,  # threads
    )


def _sgd_learner(base: type = Learner) -> type:
    """The learner with SGD (lr 1, momentum): the weight change is linear in the clipped gradients,
    so equal weights mean equal gradients (Adam's first step would turn float noise in near-zero
    gradients into +-lr). Defined here, not at module level, so Ray ships it by value."""

    class SGDLearner(base):
        def _build_optimizers(self) -> None:  # also called again after FSDP2 sharding
            super()._build_optimizers()
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.SGD(params, lr=1.0, momentum=0.5)  # a state to checkpoint
            self.scheduler = build_scheduler(self.optimizer, self.cfg)

    return SGDLearner


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_learner(tiny_model_dir: Path) -> tuple[Any, ...]:
    """Weights before, metrics of two steps, and weights after, of one learner on the whole batches."""
    single = _sgd_learner()(*_configs(tiny_model_dir))
    before = {k: v.clone() for k, v in single.get_weights().tensors.items()}
    metrics = [single.train_step(batch) for batch in BATCHES]
    return before, metrics, single.get_weights().tensors


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on the CPU, also where a GPU exists
        with Cluster(ClusterConfig(mode="ray", num_cpus=2)) as cluster:
            yield cluster


BATCHES = [_random_samples(16, 4, seed) for seed in (1, 2)]


@pytest.mark.parametrize("strategy", ["dp", "fsdp2"])
def test_two_learner_actors_match_one_learner(
    strategy: str, one_learner: tuple[Any, ...], ray_cluster: Cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Same metrics and (to float tolerance) the same weights after two RL steps of two optimizer
    steps each; the checkpoint rank 0 writes restores every rank."""
    before, expected, after_one = one_learner
    cluster, cls, args = ray_cluster, _sgd_learner(), _configs(tiny_model_dir, strategy)
    sharded = strategy == "fsdp2"
    group = LearnerGroup(
        cluster, cls, *args, num_workers=2, num_cpus=1, samples_per_optimizer_step=8, sharded=sharded
    )
    got = [group.train_step(batch) for batch in BATCHES]
    weights = cluster.get(group.get_weights.remote())
    ckpt = tmp_path / "ckpt"
    group.save_checkpoint(str(ckpt))
    group.train_step(BATCHES[0])
    group.load_checkpoint(str(ckpt))
    restored = cluster.get(group.get_weights.remote())
    replicas = [] if sharded else [cluster.get(r.get_weights.remote()).tensors for r in group.ranks]
    for r in group.ranks:
        ray.kill(r)

    for m1, m2 in zip(expected, got, strict=True):
        for key in ("loss/policy", "kl", "kl/seq", "entropy", "clip_frac", "grad_norm", "advantage/mean"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), key
        assert m2["policy_version"] == m1["policy_version"]
    step = _max_diff(before, after_one)
    assert step > 1e-3, "the updates changed (almost) nothing"
    assert weights.version == 2
    assert _max_diff(after_one, weights.tensors) < 1e-5 * max(1.0, step)
    assert _max_diff(restored.tensors, weights.tensors) == 0.0 and restored.version == 2
    assert all(_max_diff(weights.tensors, r) == 0.0 for r in replicas)  # dp: the replicas stay equal

    # The weights on disk are whole, a plain Hugging Face directory: one learner loads them.
    single = cls(*_configs(tiny_model_dir))
    if strategy == "dp":
        single.load_checkpoint(str(ckpt))
        assert single.policy_version == 2
    else:  # the optimizer state is keyed by name under fsdp2
        with pytest.raises(ValueError, match=r"learner\.strategy=fsdp2"):
            single.load_checkpoint(str(ckpt))
        _load_weights(single.model, ckpt / "policy")
    assert _max_diff(single.get_weights().tensors, weights.tensors) == 0.0


@pytest.mark.parametrize("loss", ["sigmoid", "kto"])
def test_two_preference_learners_match_one(loss: str, ray_cluster: Cluster, tiny_model_dir: Path) -> None:
    """DPO and KTO: each rank takes half the examples (split by tokens); loss, metrics, per-example
    rewards and the updated weights match one learner on all of them (KTO's reference point pairs
    each example with the one before it in the whole batch)."""
    rng = random.Random(3)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(5, 200) for _ in range(rng.randint(lo, hi))]

    if loss == "kto":
        examples = [UnpairedExample(ids(2, 8), ids(1, 9), i % 3 != 0) for i in range(6)]
    else:
        examples = [PreferencePair(ids(2, 8), ids(1, 9), ids(1, 9)) for _ in range(6)]
    cls = _sgd_learner(PreferenceLearner)
    args = (
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(lr=1.0, per_device_samples_per_micro_batch=2),
        AlgorithmConfig(kind="preference", preference_loss=loss, beta=0.1),
        0,  # seed
        1,  # threads
    )
    single = cls(*args)
    single.preference_step(examples)  # a first step: the policy moves away from the reference
    before = {k: v.clone() for k, v in single.get_weights().tensors.items()}
    m1, r1 = single.preference_step(examples)
    group = LearnerGroup(ray_cluster, cls, *args, num_workers=2, num_cpus=1)
    group.preference_step(examples, None)
    m2, r2 = group.preference_step(examples, None)
    weights = ray_cluster.get(group.get_weights.remote()).tensors
    for r in group.ranks:
        ray.kill(r)

    for key in ["loss", "grad_norm", "rewards/margin", "logps/chosen", "logps/rejected", "kl"]:
        if key not in m1:  # kl: KTO only
            continue
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), key
    assert torch.allclose(torch.tensor(r1), torch.tensor(r2), rtol=1e-4, atol=1e-6)
    after = single.get_weights().tensors
    step = _max_diff(before, after)
    assert step > 1e-3 and _max_diff(after, weights) < 1e-5 * max(1.0, step)
