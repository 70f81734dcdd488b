"""Where the wall time of one rlft ``Learner.train_step`` goes, at the GRPO benchmark's shape.

Builds the learner in-process on the GRPO benchmark's model (Qwen2.5-0.5B shape, 32k vocabulary,
random bf16 weights; ``--model tiny`` for a CPU dry run), feeds it ``--samples`` synthetic samples
of ``--prompt-len`` + ``--completion-len`` tokens (default 64 x (64 + 256): one GRPO step of
``grpo_vs_trl.py``), and after ``--warmup`` steps times the learner's stages (wall clock, CUDA
synchronised around each: collate, ``_prepare``, each ``_optimizer_step``) and runs one step
under ``torch.profiler``, printing the ops by self CPU time and by self device time.

  GPU:   python benchmarks/profile_learner_step.py --out $OUT
  CPU:   python benchmarks/profile_learner_step.py --model tiny --samples 8 --completion-len 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from grpo_vs_trl import sync
from models import QWEN2_05B, save_random_qwen2

from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.learner.batch import Sample
from rlft.learner.learner import Learner
from rlft.tiny_model import build_tiny_model


def timed(stages: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sync()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        sync()
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
        return result

    return wrapper


def rollout_then_train(
    args: argparse.Namespace, model_cfg: ModelConfig, learner: Learner, samples: list[Sample]
) -> None:
    """train_step times after a rollout of 8 prompts x 8 x ``--completion-len`` tokens each."""
    import gc

    from rlft.rollout.hf_engine import HFEngine

    engine = HFEngine(model_cfg)
    prompts = [s.prompt_ids for s in samples[:: max(1, len(samples) // 8)]][:8]
    sampling = SamplingConfig(max_new_tokens=args.completion_len)
    for collector in ("on", "off"):
        if collector == "off":
            gc.collect()
            gc.disable()
        times = []
        for i in range(4):
            engine.generate(prompts, 8, sampling, seed=i)
            sync()
            start = time.perf_counter()
            learner.train_step(samples)
            sync()
            times.append(round(time.perf_counter() - start, 3))
        print(f"train_step after a rollout, gc {collector}: {times} s")
    gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["qwen05b", "tiny"], default="qwen05b")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--completion-len", type=int, default=256)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument(
        "--prompt-jitter",
        type=int,
        default=0,
        help="prompts of prompt-len - jitter .. prompt-len tokens (uneven rows are padded, as the "
        "GRPO loop's are; 0: every row the same length, no padding)",
    )
    parser.add_argument(
        "--learner-option",
        action="append",
        default=[],
        help="LearnerConfig field, KEY=JSON (e.g. compile=true, packing=true)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--with-rollout",
        action="store_true",
        help="also time train_step right after an hf-engine rollout in the same process (as in "
        "cluster.mode=local), with Python's garbage collector on and then off",
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="learner-profile-"))
    tiny = build_tiny_model(root / "tiny")
    if args.model == "tiny":
        model_cfg, vocab = ModelConfig(path=str(tiny), dtype="float32"), 500
    else:
        path = save_random_qwen2({**QWEN2_05B, "vocab_size": 32000}, root / "qwen2-0.5b-v32k", "bfloat16")
        model_cfg, vocab = ModelConfig(path=str(path), tokenizer_path=str(tiny), dtype="bfloat16"), 32000
    learner = Learner(
        model_cfg,
        LearnerConfig(
            per_device_samples_per_micro_batch=args.micro,
            lr=1e-6,
            **{k: json.loads(v) for k, v in (o.split("=", 1) for o in args.learner_option)},
        ),
        AlgorithmConfig(beta=0.0),
        SamplingConfig(max_new_tokens=args.completion_len),
        seed=0,
    )
    rng = random.Random(0)
    samples = [
        Sample(
            [rng.randrange(vocab) for _ in range(args.prompt_len - rng.randint(0, args.prompt_jitter))],
            [rng.randrange(vocab) for _ in range(args.completion_len)],
            [-1.0] * args.completion_len,
            rng.random(),
            i // 8,
            0,
        )
        for i in range(args.samples)
    ]
    for _ in range(args.warmup):
        learner.train_step(samples)
    if args.with_rollout:
        rollout_then_train(args, model_cfg, learner, samples)
    stages: dict[str, float] = {}
    for name in ("_prepare", "_optimizer_step", "_clip_and_step"):
        setattr(learner, name, timed(stages, name, getattr(learner, name)))
    sync()
    start = time.perf_counter()
    metrics = learner.train_step(samples)
    sync()
    wall = time.perf_counter() - start
    print(f"train_step wall {wall:.3f} s (timing/train_s {metrics['timing/train_s']:.3f})")
    for name, seconds in stages.items():
        print(f"  {name}: {seconds:.3f} s")

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        learner.train_step(samples)
        sync()
    averages = prof.key_averages()
    by_cpu = averages.table(sort_by="self_cpu_time_total", row_limit=25)
    text = f"by self CPU time\n{by_cpu}\n"
    if torch.cuda.is_available():
        text += f"by self device time\n{averages.table(sort_by='self_device_time_total', row_limit=25)}\n"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "learner_profile.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
