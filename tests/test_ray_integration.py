"""Real Ray actors on a local 2-CPU Ray: one GRPO step moves the learner's weights to the rollout
worker, advances the policy version, and the worker then samples from exactly those weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlft.cli import load_config
from rlft.cluster import Cluster
from rlft.learner.batch import Sample
from rlft.trainers.online import start_workers
from rlft.weights import ObjectStoreTransport


def _samples(prompt_ids: list[list[int]], groups: list, rewards: list[float]) -> list[Sample]:
    flat = [(i, p, c) for i, (p, group) in enumerate(zip(prompt_ids, groups, strict=True)) for c in group]
    return [
        Sample(p, c.token_ids, c.logprobs, r, i, c.policy_version)
        for (i, p, c), r in zip(flat, rewards, strict=True)
    ]


def _mean_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return (
        torch.tensor([abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True)])
        .mean()
        .item()
    )


@pytest.fixture(scope="module")
def ray_cluster_cfg(tiny_model_dir: Path):
    cfg = load_config(
        ["recipe=quickstart", f"model.path={tiny_model_dir}", "cluster.num_cpus=2", "algorithm.group_size=4"]
    )
    with Cluster(cfg.cluster) as cluster:
        yield cluster, cfg


def test_one_step_syncs_weights_and_version(ray_cluster_cfg) -> None:
    cluster, cfg = ray_cluster_cfg
    assert not cluster.local
    learner, workers = start_workers(cluster, cfg)
    transport = ObjectStoreTransport()
    transport.sync(cluster, learner, workers)
    before = cluster.get(learner.get_weights.remote()).tensors

    prompt_ids = [[5, 6, 7, 8], [9, 10, 11]]
    groups = cluster.get(workers[0].generate.remote(prompt_ids, 4, cfg.rollout.sampling, 0))
    assert [len(g) for g in groups] == [4, 4]
    assert all(c.policy_version == 0 for g in groups for c in g)
    samples = _samples(prompt_ids, groups, [1.0, -1.0, 0.5, -0.5] * 2)

    # Before the update the engine samples from the learner's weights: sampler logprobs match.
    fresh = cluster.get(learner.completion_logprobs.remote(samples))
    assert _mean_abs_diff(fresh, [s.sampler_logprobs for s in samples]) < 1e-4

    metrics = learner.train_step(samples)
    assert metrics["policy_version"] == 1.0 and metrics["staleness"] == 0.0
    sync = transport.sync(cluster, learner, workers)
    assert sync["weight_sync/bytes"] > 0

    update = cluster.get(learner.get_weights.remote())
    rollout_weights = cluster.get(workers[0].get_weights.remote())
    assert update.version == 1
    assert update.tensors.keys() <= rollout_weights.keys()  # tied weights are sent once
    for name, tensor in update.tensors.items():
        assert torch.equal(rollout_weights[name], tensor), name
    assert any(not torch.equal(before[k], update.tensors[k]) for k in before), "the update changed nothing"

    groups = cluster.get(workers[0].generate.remote(prompt_ids, 4, cfg.rollout.sampling, 1))
    assert all(c.policy_version == 1 for g in groups for c in g)
    new_samples = _samples(prompt_ids, groups, [0.0] * 8)
    learner_logprobs = cluster.get(learner.completion_logprobs.remote(new_samples))
    assert _mean_abs_diff(learner_logprobs, [s.sampler_logprobs for s in new_samples]) < 1e-4
    # The old samples were drawn from the weights before the update: now they differ.
    assert _mean_abs_diff(cluster.get(learner.completion_logprobs.remote(samples)), fresh) > 1e-3
