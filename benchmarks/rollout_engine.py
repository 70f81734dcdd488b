"""Rollout throughput of rlft's hf engine per decoder, and its logprobs against the learner's.

rlft's ``HFEngine`` (in-process, one GPU) samples ``--prompts`` x ``--n`` completions of
``--max-new-tokens`` tokens each, for each ``rollout.hf.decode`` / ``cuda_graph`` variant:
``generate`` (transformers ``generate``), ``static`` eager, ``static`` + CUDA graph. Default model:
Qwen2.5-0.5B shape with a 32k vocabulary, random weights, bf16. Prompts are random token ids
(``--prompt-len`` tokens, widths varying by up to 8). ``--warmup`` untimed calls (the first
captures the graph), then the median of ``--repeats``.

For every variant it also scores the sampled completions with a plain forward pass of the same
weights (right-padded, the learner's layout) and reports the mean and max |engine logprob -
forward logprob| over completion tokens: in bf16 this measures rounding, in float32 it must be
~1e-6.

  GPU:   python benchmarks/rollout_engine.py --out $OUT
  CPU:   python benchmarks/rollout_engine.py --model tiny --prompts 2 --n 4 --max-new-tokens 16

Prints a table last; writes ``<out>/rollout_engine.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from models import QWEN2_05B, save_random_qwen2  # benchmarks/models.py (scripts run from here)

from rlft.config import HFEngineConfig, ModelConfig, SamplingConfig
from rlft.rollout.hf_engine import HFEngine
from rlft.tiny_model import build_tiny_model

VARIANTS = {
    "generate": HFEngineConfig(decode="generate"),
    "static": HFEngineConfig(decode="static", cuda_graph=False),
    "static+graph": HFEngineConfig(decode="static", cuda_graph=True),
    "static+compile+graph": HFEngineConfig(decode="static", cuda_graph=True, compile=True),
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def logprob_gap(
    engine: HFEngine, prompts: list[list[int]], groups: list, temperature: float
) -> tuple[float, float]:
    """Mean and max |engine - full forward| over every completion token."""
    pad = engine.tokenizer.pad_token_id
    diffs = []
    for prompt, group in zip(prompts, groups, strict=True):
        rows = [prompt + c.token_ids for c in group]
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=engine.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=engine.device)
        logits = engine.model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[:, :-1].float() / temperature, -1)
        ref = torch.nn.functional.pad(logp.gather(-1, ids[:, 1:, None])[..., 0], (1, 0))
        for i, c in enumerate(group):
            got = torch.tensor(c.logprobs, device=engine.device)
            diffs.append((got - ref[i, len(prompt) : len(prompt) + len(c.token_ids)]).abs())
    d = torch.cat(diffs)
    return d.mean().item(), d.max().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["qwen05b", "tiny"], default="qwen05b")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    tiny = build_tiny_model(root / "tiny")
    if args.model == "tiny":
        cfg = ModelConfig(path=str(tiny), dtype="float32")
    else:
        path = save_random_qwen2({**QWEN2_05B, "vocab_size": 32000}, root / "qwen2-0.5b-v32k", "bfloat16")
        cfg = ModelConfig(path=str(path), tokenizer_path=str(tiny), dtype="bfloat16")

    gen = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, 500, (args.prompt_len - i % 8,), generator=gen).tolist() for i in range(args.prompts)
    ]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    rows = []
    for name in args.variants.split(","):
        engine = HFEngine(cfg, max_prompts_per_generate=args.prompts, hf_cfg=VARIANTS[name])
        times = []
        for i in range(args.warmup + args.repeats):
            _sync()
            start = time.perf_counter()
            groups = engine.generate(prompts, args.n, sampling, seed=i)
            _sync()
            times.append(time.perf_counter() - start)
        tokens = sum(len(c.token_ids) for g in groups for c in g)
        mean_gap, max_gap = logprob_gap(engine, prompts, groups, sampling.temperature)
        row = {
            "variant": name,
            "first_s": times[0],
            "median_s": statistics.median(times[args.warmup :]),
            "times": times,
            "tokens": tokens,
            "logprob_gap_mean": mean_gap,
            "logprob_gap_max": max_gap,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0,
        }
        row["tokens_per_s"] = tokens / row["median_s"]
        rows.append(row)
        print(json.dumps(row))
        with (out / "rollout_engine.jsonl").open("a") as f:
            f.write(json.dumps({**row, "args": vars(args)}) + "\n")
        del engine
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    print(f"\n{args.prompts} prompts x {args.n} x {args.max_new_tokens} new tokens, model {args.model}")
    print("| decode | first call s | median s | tokens | tokens/s | vs generate | logprob gap mean / max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = next((r["median_s"] for r in rows if r["variant"] == "generate"), None)
    for r in rows:
        speed = f"{base / r['median_s']:.1f}x" if base else "-"
        print(
            f"| {r['variant']} | {r['first_s']:.2f} | {r['median_s']:.3f} | {r['tokens']} | "
            f"{r['tokens_per_s']:,.0f} | {speed} | {r['logprob_gap_mean']:.2e} / {r['logprob_gap_max']:.2e} |"
        )


if __name__ == "__main__":
    main()
