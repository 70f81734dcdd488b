"""Time one weight sync, learner actor -> rollout actor, for each transport and bucket size.

The learner and rollout worker are rlft's own ``Learner`` and ``RolloutWorker`` (hf engine) as
Ray actors, each holding a model with random weights: by default a Qwen2-0.5B-shaped model in
bf16 (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied
embeddings: 494M parameters, 0.99 GB), or ``--model tiny`` (the offline test model, for a dry
run on the CPU). The tokenizer is the tiny model's (weight sync never uses it).

For each (transport, bucket size): one first sync (connects the group / plans the buckets,
reported apart), ``--warmup`` untimed syncs, ``--repeats`` timed ones (``timing/weight_sync_s``,
the driver's wall time from the start of ``sync`` until every worker has the weights in place),
then a check: the learner's weights are perturbed and its version bumped, one more sync, and the
worker's per-tensor sums and policy version must equal the learner's exactly.

  one GPU, colocated (CUDA IPC):  python benchmarks/weight_sync.py --gpus-per-actor 0.5 \\
      --transports object_store,cuda_ipc --bucket-mb 256,1024 --out $OUT
  two GPUs (NCCL):                python benchmarks/weight_sync.py --gpus-per-actor 1 \\
      --transports object_store,collective --bucket-mb 256,1024 --out $OUT
  CPU dry run (gloo):             python benchmarks/weight_sync.py --model tiny --gpus-per-actor 0

``--engine vllm`` puts rlft's vLLM engine in the rollout worker (eager, 30% of the GPU) and
``--vllm-weight-update`` picks how it takes the weights (``rollout.vllm.weight_update``: direct
copies into vLLM's parameters, layerwise reload); the check then compares float64 sums per vLLM
parameter (q/k/v and gate/up fused: sums of the parts, to 1e-9 relative) over every parameter
the engine still holds as loaded.

Prints a table last; writes one JSON object per case to ``<out>/weight_sync.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from models import QWEN2_05B, save_random_qwen2  # benchmarks/models.py (scripts run from here)

from rlft.cluster import Cluster
from rlft.config import (
    AlgorithmConfig,
    ClusterConfig,
    LearnerConfig,
    ModelConfig,
    RolloutConfig,
    SamplingConfig,
    VLLMEngineConfig,
)
from rlft.learner.batch import Sample
from rlft.learner.learner import Learner
from rlft.rollout.worker import RolloutWorker
from rlft.tiny_model import build_tiny_model
from rlft.weights import make_transport

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
"""NVLink multicast stays off on the shared benchmark machines (device docs)."""


def build_models(kind: str, root: Path) -> ModelConfig:
    """The model directory (random weights) and tokenizer the actors load."""
    tiny = build_tiny_model(root / "tiny")
    if kind == "tiny":
        return ModelConfig(path=str(tiny), dtype="float32")
    path = save_random_qwen2(QWEN2_05B, root / "qwen2-0.5b-random", "bfloat16")
    return ModelConfig(path=str(path), tokenizer_path=str(tiny), dtype="bfloat16")


class BenchLearner(Learner):
    """The learner, plus what the benchmark needs to check a sync without moving the weights."""

    @torch.no_grad()
    def perturb(self) -> int:
        """Change every parameter a little and advance the version, as a training step would."""
        for p in self.model.parameters():
            p.add_(torch.randn_like(p), alpha=1e-2)
        self.policy_version += 1
        return self.policy_version

    def fingerprint(self) -> tuple[int, dict[str, float]]:
        return self.policy_version, _sums(self.model)

    def describe(self) -> dict[str, Any]:
        params = {p.data_ptr(): p for p in self.model.parameters()}.values()
        return {
            "parameters": sum(p.numel() for p in params),
            "bytes": sum(p.numel() * p.element_size() for p in params),
            "device": str(self.device),
            "gpu": torch.cuda.get_device_name() if self.device.type == "cuda" else None,
            "torch": torch.__version__,
        }


class BenchWorker(RolloutWorker):
    def fingerprint(self) -> tuple[int, dict[str, float]]:
        if hasattr(self.engine, "llm"):  # vLLM: its parameters, under its (fused) names
            return self.policy_version, {
                n: t.double().sum().item() for n, t in self.engine.get_weights().items()
            }
        return self.policy_version, _sums(self.engine.model)


FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj"}
FUSED["up_proj"] = "gate_up_proj"


def same_weights(learner: dict[str, float], worker: dict[str, float], fused: bool) -> bool:
    """Whether the worker's per-tensor sums are the learner's: exactly (hf), or, with vLLM's fused
    names, the sums of the fused parts to 1e-9 relative over the parameters vLLM holds as loaded."""
    if not fused:
        return learner.keys() == worker.keys() and learner == worker
    folded: dict[str, float] = {}
    for name, total in learner.items():
        parts = name.split(".")
        key = ".".join(FUSED.get(part, part) for part in parts)
        folded[key] = folded.get(key, 0.0) + total
    shared = folded.keys() & worker.keys()
    print(f"check: {len(shared)} of vLLM's {len(worker)} tensors compared", flush=True)
    return bool(shared) and all(abs(folded[k] - worker[k]) <= 1e-9 * max(1.0, abs(folded[k])) for k in shared)


def _sums(model: torch.nn.Module) -> dict[str, float]:
    """Per-tensor float64 sums: equal on both sides iff the sync copied the same values."""
    return {name: t.double().sum().item() for name, t in model.state_dict().items()}


@dataclass
class Result:
    transport: str
    bucket_mb: float
    gb: float
    first_s: float
    median_ms: float
    min_ms: float
    p90_ms: float
    max_ms: float
    gb_per_s: float
    verified: bool
    logprob_gap: float
    stale_logprob_gap: float
    times_ms: list[float]


def run_case(
    cluster: Cluster,
    learner: Any,
    worker: Any,
    name: str,
    bucket_mb: float,
    warmup: int,
    repeats: int,
    fused: bool = False,
) -> Result:
    transport = make_transport(name, bucket_mb, local=cluster.local)
    first = transport.sync(cluster, learner, [worker])
    for _ in range(warmup):
        transport.sync(cluster, learner, [worker])
    runs = [transport.sync(cluster, learner, [worker]) for _ in range(repeats)]
    times = sorted(r["timing/weight_sync_s"] * 1e3 for r in runs)
    nbytes = runs[-1]["weight_sync/bytes"]

    stale = _samples(cluster.get(worker.generate.remote(PROMPTS, 4, SAMPLING, 0))) if fused else []
    cluster.get(learner.perturb.remote())
    transport.sync(cluster, learner, [worker])
    (want_version, want), (got_version, got) = cluster.get(
        [learner.fingerprint.remote(), worker.fingerprint.remote()]
    )
    verified = want_version == got_version and same_weights(want, got, fused)
    gaps = logprob_gaps(cluster, learner, worker, stale) if fused else (float("nan"), float("nan"))

    median = statistics.median(times)
    return Result(
        transport=name,
        bucket_mb=bucket_mb,
        gb=nbytes / 1e9,
        first_s=first["timing/weight_sync_s"],
        median_ms=median,
        min_ms=times[0],
        p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
        max_ms=times[-1],
        gb_per_s=nbytes / 1e9 / (median / 1e3),
        verified=verified,
        logprob_gap=gaps[0],
        stale_logprob_gap=gaps[1],
        times_ms=[round(t, 3) for t in times],
    )


PROMPTS = [list(range(5 + i, 69 + i)) for i in range(4)]
SAMPLING = SamplingConfig(max_new_tokens=32)


def _samples(groups: list[list[Any]]) -> list[Sample]:
    return [
        Sample(PROMPTS[i], c.token_ids, c.logprobs, 0.0, i, c.policy_version)
        for i, group in enumerate(groups)
        for c in group
    ]


def _mean_gap(cluster: Cluster, learner: Any, samples: list[Sample]) -> float:
    """Mean |sampler logprob - the learner's recomputed logprob| over every completion token."""
    ours = cluster.get(learner.completion_logprobs.remote(samples))
    pairs = [
        pair
        for s, row in zip(samples, ours, strict=True)
        for pair in zip(s.sampler_logprobs, row, strict=True)
    ]
    gaps = [abs(a - b) for a, b in pairs]
    return sum(gaps) / len(gaps)


def logprob_gaps(cluster: Cluster, learner: Any, worker: Any, stale: list[Sample]) -> tuple[float, float]:
    """End to end: vLLM's sampler logprobs after the check's sync against the learner's, and the
    same for samples drawn before it (the old weights: the gap a missed update would leave)."""
    fresh = _samples(cluster.get(worker.generate.remote(PROMPTS, 4, SAMPLING, 1)))
    return _mean_gap(cluster, learner, fresh), _mean_gap(cluster, learner, stale)


def table(results: list[Result]) -> str:
    head = (
        "transport     bucket_MB   GB    first_s  median_ms  min_ms   p90_ms   max_ms    GB/s  same  "
        "gap  stale_gap"
    )
    rows = [
        f"{r.transport:<13} {r.bucket_mb:>9g} {r.gb:5.3f} {r.first_s:8.3f} {r.median_ms:10.2f} "
        f"{r.min_ms:7.2f} {r.p90_ms:8.2f} {r.max_ms:8.2f} {r.gb_per_s:7.1f}  {r.verified}  "
        f"{r.logprob_gap:.2e}  {r.stale_logprob_gap:.2e}"
        for r in results
    ]
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["qwen2-0.5b", "tiny"], default="qwen2-0.5b")
    parser.add_argument("--transports", default="object_store,cuda_ipc,collective")
    parser.add_argument("--bucket-mb", default="256,1024", help="comma-separated bucket sizes")
    parser.add_argument("--gpus-per-actor", type=float, default=0.5, help="0.5: both on one GPU; 1: one each")
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="the rollout worker's engine")
    parser.add_argument("--vllm-weight-update", default="auto", help="rollout.vllm.weight_update")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--object-store-repeats", type=int, default=5, help="the slow baseline: fewer")
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key, value in NO_MULTICAST.items():
        os.environ.setdefault(key, value)
    model_cfg = build_models(args.model, Path(tempfile.gettempdir()) / "rlft-bench")

    import ray

    ray.init(
        num_cpus=4,
        num_gpus=torch.cuda.device_count(),
        include_dashboard=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", **NO_MULTICAST}},
    )
    results: list[Result] = []
    failures: list[str] = []
    with Cluster(ClusterConfig(mode="ray")) as cluster:
        gpus = args.gpus_per_actor
        learner = cluster.spawn(
            BenchLearner,
            model_cfg,
            LearnerConfig(),
            AlgorithmConfig(beta=0.0),
            SamplingConfig(),
            0,
            1,
            num_cpus=1,
            num_gpus=gpus,
        )
        vllm = VLLMEngineConfig(
            gpu_memory_utilization=0.3,
            enforce_eager=True,
            max_model_len=512,  # the tiny model's limit; prompts + completions here are < 100 tokens
            weight_update=args.vllm_weight_update,
        )
        rollout = RolloutConfig(engine=args.engine, vllm=vllm)
        worker = cluster.spawn(BenchWorker, model_cfg, rollout, 1, num_cpus=1, num_gpus=gpus)
        info = ray.get(learner.describe.remote(), timeout=300)  # fails instead of waiting for GPUs
        print(f"model: {info}", flush=True)
        for name in args.transports.split(","):
            sizes = [float(s) for s in args.bucket_mb.split(",")]
            repeats = args.object_store_repeats if name == "object_store" else args.repeats
            warmup = min(args.warmup, 1) if name == "object_store" else args.warmup
            for size in sizes:
                try:
                    fused = args.engine == "vllm"
                    result = run_case(cluster, learner, worker, name, size, warmup, repeats, fused)
                except Exception:  # record the failure, go on with the other cases
                    print(f"FAILED: {name} bucket_mb={size}\n{traceback.format_exc()}", flush=True)
                    failures.append(f"{name} bucket_mb={size}")
                    continue
                print(table([result]).splitlines()[1], flush=True)
                results.append(result)
                with open(out / "weight_sync.jsonl", "a") as f:
                    record = {
                        **asdict(result),
                        **info,
                        "model": args.model,
                        "engine": args.engine,
                        "vllm_weight_update": args.vllm_weight_update if args.engine == "vllm" else None,
                        "gpus_per_actor": gpus,
                        "host": platform.node(),
                        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    }
                    f.write(json.dumps(record) + "\n")
    ray.shutdown()
    print(
        f"\nweight sync, {args.model} ({info['bytes'] / 1e9:.3f} GB, {info['gpu'] or 'CPU'}), "
        f"gpus/actor={args.gpus_per_actor}, engine={args.engine}"
        f"{f' ({args.vllm_weight_update})' if args.engine == 'vllm' else ''}, {time.strftime('%Y-%m-%d')}"
    )
    print(table(results))
    if failures:
        print("failed: " + ", ".join(failures))


if __name__ == "__main__":
    main()
