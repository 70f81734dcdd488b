"""Where a vLLM rollout's time goes: the GRPO benchmark's generation, one request option at a time.

rlft's vLLM engine sends each prompt once with ``n`` = group size, a per-request seed (so equal
calls give equal completions), ``logprobs=0`` (the sampled token's log-prob, which the importance
ratio needs) and no detokenization. Each variant below changes one of these and times the same
generation (``ignore_eos``, so every variant decodes the same number of tokens):

- ``rlft``: what the engine sends;
- ``no-seed``: no per-request seed (vLLM samples seeded requests with a generator of their own);
- ``no-logprobs``: no sampled-token log-prob;
- ``plain``: neither;
- ``detokenize``: vLLM's incremental detokenizer on (what a request with stop strings needs).

``--profile`` then records one ``rlft`` generation with ``torch.profiler`` (the engine core runs in
this process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as in rlft) and prints the GPU's busy time per
decode step beside the wall time per step, and the kernels and host functions that take longest.

  GPU:       python vllm_decode.py --out $OUT [--async-scheduling] [--profile]
  CPU check: python vllm_decode.py --model tiny --max-new-tokens 8 --enforce-eager --repeats 1

Writes ``<out>/vllm_decode.json``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = {
    "rlft": {"seed": True, "logprobs": 0, "detokenize": False},
    "no-seed": {"seed": False, "logprobs": 0, "detokenize": False},
    "no-logprobs": {"seed": True, "logprobs": None, "detokenize": False},
    "plain": {"seed": False, "logprobs": None, "detokenize": False},
    "detokenize": {"seed": True, "logprobs": 0, "detokenize": True},
}


def requests(prompts: list[list[int]], args: argparse.Namespace, variant: dict[str, Any]) -> list[Any]:
    from vllm import SamplingParams

    return [
        SamplingParams(
            n=args.group,
            temperature=1.0,
            max_tokens=args.max_new_tokens,
            ignore_eos=True,
            logprobs=variant["logprobs"],
            detokenize=variant["detokenize"],
            seed=1000 + i if variant["seed"] else None,
        )
        for i in range(len(prompts))
    ]


def time_variant(llm: Any, prompts: list[list[int]], args: argparse.Namespace, name: str) -> dict[str, Any]:
    params = requests(prompts, args, VARIANTS[name])
    inputs = [{"prompt_token_ids": p} for p in prompts]
    times = []
    for _ in range(args.repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        times.append(time.perf_counter() - start)
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    s = statistics.median(times[1:])
    return {
        "variant": name,
        "s": s,
        "runs_s": times,
        "tokens": tokens,
        "tok_per_s": tokens / s,
        "ms_per_decode_step": 1000 * s / args.max_new_tokens,
    }


def profile(llm: Any, prompts: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    """One ``rlft`` generation under ``torch.profiler``: GPU busy time against wall time."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    params = requests(prompts, args, VARIANTS["rlft"])
    inputs = [{"prompt_token_ids": p} for p in prompts]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        llm.generate(inputs, params, use_tqdm=False)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    device_us = sum(e.self_device_time_total for e in events)
    by_device = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:15]
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {
        "wall_s": wall,
        "wall_ms_per_step": 1000 * wall / args.max_new_tokens,
        "device_busy_ms_per_step": device_us / 1000 / args.max_new_tokens,
        "device_busy_frac": device_us / 1e6 / wall,
        "top_device": [(e.key[:90], e.count, e.self_device_time_total / 1000) for e in by_device],
        "top_host": [(e.key[:90], e.count, e.self_cpu_time_total / 1000) for e in by_host],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["qwen05b", "tiny"], default="qwen05b")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--gpu-memory", type=float, default=0.3)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--async-scheduling", action="store_true", help="vLLM's async_scheduling option")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as rlft's engine: core in-process
    import vllm
    from grpo_vs_trl import build_inputs  # benchmarks/ (scripts run from here)
    from transformers import AutoTokenizer

    root = Path(os.environ.get("RLFT_CACHE_DIR", tempfile.gettempdir())) / "bench_inputs"
    model, _, dtype, data = build_inputs(args.model, root, args.prompts)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [tokenizer(json.loads(line)["prompt"])["input_ids"] for line in data.read_text().splitlines()]
    engine_args: dict[str, Any] = {"async_scheduling": True} if args.async_scheduling else {}
    start = time.perf_counter()
    llm = vllm.LLM(
        model=str(model),
        dtype=dtype,
        gpu_memory_utilization=args.gpu_memory,
        enforce_eager=args.enforce_eager,
        max_model_len=args.max_new_tokens + max(map(len, prompts)) + 16,
        max_num_batched_tokens=8192,  # every prompt in one prefill (no chunking)
        seed=0,
        **engine_args,
    )
    result: dict[str, Any] = {
        "vllm": vllm.__version__,
        "args": vars(args),
        "load_s": time.perf_counter() - start,
        "prompt_tokens": [len(p) for p in prompts],
    }
    result["variants"] = [time_variant(llm, prompts, args, v) for v in args.variants.split(",")]
    if args.profile:
        result["profile"] = profile(llm, prompts, args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm_decode.json").write_text(json.dumps(result, indent=1))
    print(
        f"vLLM {vllm.__version__}, load {result['load_s']:.1f} s, {args.prompts} x {args.group} x "
        f"{args.max_new_tokens} tokens, eager={args.enforce_eager}, async={args.async_scheduling}"
    )
    print(f"{'variant':<12} {'s':>8} {'tok/s':>9} {'ms/step':>8}")
    for r in result["variants"]:
        print(f"{r['variant']:<12} {r['s']:8.3f} {r['tok_per_s']:9.0f} {r['ms_per_decode_step']:8.2f}")
    if args.profile:
        p = result["profile"]
        print(
            f"profile: wall {p['wall_ms_per_step']:.2f} ms/step, GPU busy {p['device_busy_ms_per_step']:.2f} "
            f"ms/step ({100 * p['device_busy_frac']:.0f}%)"
        )
        for title, rows in (("device", p["top_device"]), ("host", p["top_host"])):
            print(f"top {title} (name, calls, ms):")
            for name, count, ms in rows[:10]:
                print(f"  {ms:9.1f} {count:7d}  {name}")


if __name__ == "__main__":
    main()
