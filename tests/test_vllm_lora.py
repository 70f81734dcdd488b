"""LoRA adapters in the real vLLM engine (CPU build) on the tiny model: the learner sends only
its adapters, vLLM serves them as a LoRA over the unchanged base model.

As in test_vllm_engine.py, the engine runs in a Ray actor, never in the pytest process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

# The full-weight vLLM tests' helpers (pytest puts tests/ on sys.path).
from test_vllm_engine import PROMPTS, VLLM_CPU, _mean_abs_diff, vllm_actors
from test_vllm_engine import _samples as samples_with_alternating_rewards

from rlft.cli import load_config, main
from rlft.cluster import Cluster
from rlft.config import LoraConfig, ModelConfig, SamplingConfig
from rlft.learner.batch import Sample
from rlft.rollout.vllm_engine import _LoraState, _meta_model, vllm_available
from rlft.tracking import read_metrics
from rlft.weights import CollectiveTransport, ObjectStoreTransport


def test_lora_on_lm_head_is_refused_with_vllm(tiny_model_dir: Path) -> None:
    """vLLM puts LoRA adapters on the linear layers of the decoder only: the config check names
    the fix, and the engine's own check (vLLM's list of layers, here as vLLM 0.32 reports it for
    Qwen2) names the layers it cannot serve."""
    with pytest.raises(ValueError, match=r"leave them out of model\.lora\.target_modules"):
        targets = "model.lora.target_modules=[q_proj,lm_head]"
        load_config([f"model.path={tiny_model_dir}", "model.lora.rank=8", targets, *VLLM_CPU])
    vllm_layers = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    lora = LoraConfig(rank=4, target_modules=["q_proj", "lm_head"])
    state = _LoraState(_meta_model(ModelConfig(path=str(tiny_model_dir), lora=lora)))
    with pytest.raises(ValueError, match=r"has \['lm_head'\], which vLLM cannot"):
        state.check_targets(vllm_layers)
    _LoraState(_meta_model(ModelConfig(path=str(tiny_model_dir), lora=LoraConfig(rank=4)))).check_targets(
        vllm_layers
    )


@pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")
def test_quickstart_lora_with_vllm(
    quickstart_args: Callable[..., list[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A few steps of the real trainer with a LoRA learner and a vLLM rollout actor: each step's
    samples come from the learner's current adapters and only the adapters are synced. It runs
    before the module's Ray actors exist: with them alive it competes for the 2 CPUs (seen to hang)."""
    steps = 4
    out = tmp_path / "run"
    args = quickstart_args(
        out, f"trainer.max_steps={steps}", "cluster.num_cpus=2", "model.lora.rank=8", *VLLM_CPU
    )
    assert main(args) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert max(m["logprob_diff/sampler"] for m in metrics) < 1e-4
    assert metrics[-1]["policy_version"] == steps
    base = load_file(tiny_model_dir / "model.safetensors")
    full_bytes = sum(t.numel() * t.element_size() for t in base.values())
    assert all(0 < m["weight_sync/bytes"] < 0.25 * full_bytes for m in metrics)


@pytest.fixture(scope="module")
def actors(tiny_model_dir: Path) -> Iterator[tuple[Cluster, object, object]]:
    """A Ray LoRA learner (rank 8 on the attention and MLP projections) and one Ray rollout
    worker with the vLLM engine."""
    with vllm_actors(tiny_model_dir, "model.lora.rank=8") as actors:
        yield actors


def _samples(cluster: Cluster, worker: object, seed: int) -> list[Sample]:
    """4 vLLM completions per prompt (up to 8 tokens), rewards 1, 0, 1, 0 within each group."""
    groups = cluster.get(worker.generate.remote(PROMPTS, 4, SamplingConfig(max_new_tokens=8), seed))
    return samples_with_alternating_rewards(groups)


def _loaded_loras(cluster: Cluster, worker: object) -> set[int]:
    """The LoRA ids the worker's vLLM engine holds."""
    return cluster.get(worker.__ray_call__.remote(lambda w: w.engine.llm.llm_engine.list_loras()))


def test_lora_sync_is_real(actors, tiny_model_dir: Path) -> None:
    """Before any update vLLM samples from the base model, which is peft's initial policy (B = 0).
    After a LoRA training step the adapters alone, moved by a real transport, make vLLM report the
    learner's logprobs for its own samples; its samples from before the sync do not match. Collective
    (gloo) in ~10 KB buckets (an update spans many), then the object store after a second step;
    vLLM holds one adapter at a time."""
    cluster, learner, worker = actors
    before = _samples(cluster, worker, seed=11)
    assert _mean_abs_diff(cluster, learner, before) < 1e-4
    base = load_file(tiny_model_dir / "model.safetensors")
    full_bytes = sum(t.numel() * t.element_size() for t in base.values())

    for step, transport in enumerate([CollectiveTransport(bucket_mb=0.01), ObjectStoreTransport()], 1):
        learner.train_step(before)
        metrics = transport.sync(cluster, learner, [worker])
        assert 0 < metrics["weight_sync/bytes"] < 0.25 * full_bytes
        after = _samples(cluster, worker, seed=11)
        assert {s.policy_version for s in after} == {step}
        synced, skipped = _mean_abs_diff(cluster, learner, after), _mean_abs_diff(cluster, learner, before)
        print(
            f"{type(transport).__name__}: {metrics['weight_sync/bytes']} bytes, mean |vLLM - learner| "
            f"logprob {synced:.2e}, unsynced {skipped:.2e}"
        )
        assert synced < 1e-4
        assert skipped > 100 * synced and skipped > 1e-2
        assert len(_loaded_loras(cluster, worker)) == 1
        before = after
