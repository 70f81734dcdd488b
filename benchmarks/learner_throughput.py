"""Learner training throughput (tokens/s) and MFU of rlft's own ``Learner.train_step``.

The learner is built in-process (no Ray) on a Qwen2.5-0.5B-shaped model with random weights in
bf16 (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied
embeddings: 494M parameters), saved to a temporary directory and loaded through
``model.dtype=bfloat16``; or ``--model tiny`` (a small Qwen2 shape, for a dry run on the CPU).
The tokenizer is the offline tiny model's (the learner only needs its pad id).

Each step gets ``--samples`` synthetic ``Sample``s of ``--prompt-len`` + ``--completion-len``
random token ids (default 64 + 960 = 1024 tokens), random rewards in groups of 8, GRPO with one
optimizer step per train_step. For each micro-batch size (``per_device_samples_per_micro_batch``):

  rlft        ``Learner.train_step`` (GRPO, beta=0: no reference model), whole step timed
  hf_labels   plain transformers reference on the same batch and micro-batches:
              ``model(input_ids, labels=input_ids).loss.backward()`` (no optimizer step)
  hf_noloss   the same forward/backward with a trivial loss, ``logits.sum()`` (the backbone and
              LM head alone: what any loss computation on materialised logits adds is excluded)

and ``rlft`` with beta > 0 (a frozen reference model, one more no-grad forward per step) at the
micro-batch size where beta=0 was fastest. Each case: ``--warmup`` untimed steps, then the median
of ``--repeats`` timed ones (wall clock between CUDA synchronisations). Peak memory is
``torch.cuda.max_memory_allocated`` over the case (it includes weights, gradients and, for rlft,
the AdamW state). A case that runs out of memory is recorded as OOM and the others go on.

FLOPs. tokens = samples x sequence length (prompt and completion: all go through forward and
backward). ``MFU`` counts 6 * N * tokens with N = every parameter once (494,032,768; the tied
embedding counts once, as the LM-head matmul); ``MFU+attn`` adds the attention score/value
matmuls, 12 * layers * hidden * seq per token (not halved for the causal mask). With beta > 0 the
reference forward adds a third of each (2N, 4 * layers * hidden * seq). Peak = the largest bf16
``torch.matmul`` rate measured in this script (random data, CUDA events, median).

A ``torch.profiler`` pass over one rlft step (at the fastest micro-batch size) then lists the
kernels that take the device time (``<out>/profile.txt``).

Learner options (all off by default, i.e. the padded path with the default 4096-token chunked
LM head): ``--packing`` (``--packed-attention auto|varlen|mask``), ``--chunk-tokens`` (0 = full
logits), ``--grad-ckpt``, ``--mixed-precision bf16`` (float32 weights saved and loaded, bf16
autocast; else the weights are bf16 on the GPU), ``--max-tokens 16384,32768`` (token-budget
micro-batches: the sizes swept instead of ``--micro``), ``--vary-lengths`` (completion lengths
uniform in [completion-len / 4, completion-len], so packing has padding to remove). With
varying lengths tokens = real tokens only, and the attention FLOPs are 12 * layers * hidden *
sum(L_i^2) / tokens per token. Gradient-checkpointing recompute is not counted in MFU. Before
timing, ``check`` compares the configured path's log-probabilities with the model's own padded
full-logit forward (sdpa) on 4 samples (max |difference| over completion tokens, printed and
stored with every case: about 1e-2 in bf16 from kernel rounding; larger means a bug).

  H200:           python benchmarks/learner_throughput.py --micro 4,8,16,32 --out $OUT
  H200, fast path: python benchmarks/learner_throughput.py --packing --max-tokens 16384,32768 \
                      --cases rlft,hf_noloss --out $OUT
  CPU dry run:    python benchmarks/learner_throughput.py --model tiny --prompt-len 8 \\
                      --completion-len 24 --samples 16 --micro 4,8 --repeats 2 --warmup 1

Prints a table last; writes one JSON object per case to ``<out>/learner_throughput.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from models import QWEN2_05B, save_random_qwen2  # benchmarks/models.py (scripts run from here)

from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.learner.batch import Batch, Sample, collate
from rlft.learner.learner import Learner
from rlft.learner.optim import autocast
from rlft.tiny_model import build_tiny_model

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
"""A small Qwen2 shape for the CPU dry run."""


def build_model(kind: str, root: Path, fp32: bool) -> tuple[ModelConfig, dict[str, Any]]:
    """The model directory (random weights, bf16 on the GPU unless ``fp32``) and its shape."""
    tiny = build_tiny_model(root / "tiny")
    shape = QWEN2_05B if kind == "qwen2-0.5b" else TINY
    dtype = "bfloat16" if torch.cuda.is_available() and not fp32 else "float32"
    path = save_random_qwen2(shape, root / f"{kind}-random-{dtype}", dtype)
    return ModelConfig(path=str(path), tokenizer_path=str(tiny), dtype=dtype), shape


def make_samples(
    n: int, prompt_len: int, completion_len: int, vocab: int, seed: int, vary: bool = False
) -> list[Sample]:
    """Random token ids, random sampler log-probs, random rewards in groups of 8; with ``vary``
    completion lengths uniform in [completion_len / 4, completion_len]."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        length = rng.randint(max(1, completion_len // 4), completion_len) if vary else completion_len
        samples.append(
            Sample(
                prompt_ids=[rng.randrange(vocab) for _ in range(prompt_len)],
                completion_ids=[rng.randrange(vocab) for _ in range(length)],
                sampler_logprobs=[-rng.random() * 5 for _ in range(length)],
                reward=rng.random(),
                group_id=i // 8,
                policy_version=0,
            )
        )
    return samples


def check_logprobs(learner: Learner, batch: Batch) -> float:
    """max |log-prob difference| over the completion tokens of ``batch`` between the learner's
    configured path (packing, chunked head, attention, autocast) and the model's own padded
    full-logit forward with sdpa attention."""
    cfg = learner.cfg
    fast = learner._no_grad_forward(learner._logprobs_of(learner.model), batch)
    learner.cfg = replace(cfg, packing=False, logprob_chunk_tokens=0)
    try:
        with sdpa_attention(learner.model):
            reference = learner._no_grad_forward(learner._logprobs_of(learner.model), batch)
    finally:
        learner.cfg = cfg
    return (fast - reference)[batch.completion_mask.bool()].abs().max().item()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_peak_tflops(repeats: int = 20) -> tuple[float | None, dict[str, float]]:
    """The best dense bf16 matmul rate (TFLOP/s) over a few large square-ish shapes."""
    if not torch.cuda.is_available():
        return None, {}
    rates = {}
    for m, n, k in [(8192, 8192, 8192), (16384, 16384, 8192), (16384, 16384, 16384)]:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(5):
            torch.matmul(a, b)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        rates[f"{m}x{n}x{k}"] = 2 * m * n * k / statistics.median(times) / 1e12
        del a, b
    torch.cuda.empty_cache()
    return max(rates.values()), rates


@dataclass
class Result:
    case: str
    micro: int
    beta: float
    tokens: int
    median_s: float = float("nan")
    min_s: float = float("nan")
    max_s: float = float("nan")
    tokens_per_s: float = float("nan")
    tflops: float = float("nan")
    tflops_attn: float = float("nan")
    mfu: float = float("nan")
    mfu_attn: float = float("nan")
    peak_mem_gb: float = float("nan")
    max_tokens: int = 0
    status: str = "ok"
    times_s: list[float] = field(default_factory=list)


def time_case(
    step: Callable[[], Any],
    result: Result,
    warmup: int,
    repeats: int,
    flops_per_token: tuple[float, float],
    peak: float | None,
) -> Result:
    """Warm up, then time ``step`` ``repeats`` times; OOM is recorded, not raised."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(warmup):
            step()
        sync()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        result.status = "OOM"
        if torch.cuda.is_available():
            result.peak_mem_gb = torch.cuda.max_memory_allocated() / 1e9
        return result
    median = statistics.median(times)
    result.times_s = [round(t, 4) for t in times]
    result.median_s, result.min_s, result.max_s = median, min(times), max(times)
    result.tokens_per_s = result.tokens / median
    result.tflops = result.tokens_per_s * flops_per_token[0] / 1e12
    result.tflops_attn = result.tokens_per_s * flops_per_token[1] / 1e12
    if peak:
        result.mfu, result.mfu_attn = result.tflops / peak, result.tflops_attn / peak
    if torch.cuda.is_available():
        result.peak_mem_gb = torch.cuda.max_memory_allocated() / 1e9
    return result


@contextlib.contextmanager
def sdpa_attention(model: torch.nn.Module) -> Iterator[None]:
    """The model with transformers' sdpa attention for padded batches (the learner may have
    switched it to rlft's varlen attention, which takes packed rows only)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attention = base.config._attn_implementation
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation(attention)


def hf_step(
    model: torch.nn.Module, input_ids: torch.Tensor, micro: int, labels: bool, learner_cfg: LearnerConfig
) -> Callable[[], None]:
    """One plain transformers forward/backward over ``input_ids`` in micro-batches (sdpa, under
    the learner's autocast)."""
    n_micro = -(-len(input_ids) // micro)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with sdpa_attention(model):
            for lo in range(0, len(input_ids), micro):
                ids = input_ids[lo : lo + micro]
                with autocast(learner_cfg, ids.device):
                    out = model(input_ids=ids, labels=ids if labels else None)
                    loss = out.loss if labels else out.logits.sum()
                (loss / n_micro).backward()
                del loss, out
        model.zero_grad(set_to_none=True)

    return step


def profile_step(learner: Learner, samples: list[Sample], out: Path, top: int) -> str:
    """Device time per kernel over one rlft train_step (after the timed runs: warm)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        learner.train_step(samples)
        sync()
    averages = prof.key_averages()
    sort = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    try:
        full = averages.table(sort_by=sort, row_limit=60)
        short = averages.table(sort_by=sort, row_limit=top)
    except (AttributeError, KeyError):  # older torch: cuda_time names
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        full = averages.table(sort_by=sort, row_limit=60)
        short = averages.table(sort_by=sort, row_limit=top)
    (out / "profile.txt").write_text(full)
    return short


def table(results: list[Result], peak: float | None) -> str:
    head = (
        "case       micro budget beta  tokens  median_s  tokens/s   TFLOP/s  MFU    TFLOP/s+attn  "
        "MFU+attn  peak_GB  status"
    )
    rows = []
    for r in results:
        mfu = f"{r.mfu:6.1%}" if peak and r.status == "ok" else "     -"
        mfu_attn = f"{r.mfu_attn:8.1%}" if peak and r.status == "ok" else "       -"
        rows.append(
            f"{r.case:<10} {r.micro:>5} {r.max_tokens:>6} {r.beta:>4g} {r.tokens:>7} {r.median_s:9.3f} "
            f"{r.tokens_per_s:9.0f} "
            f"{r.tflops:8.1f} {mfu} {r.tflops_attn:13.1f} {mfu_attn} {r.peak_mem_gb:8.1f}  {r.status}"
        )
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["qwen2-0.5b", "tiny"], default="qwen2-0.5b")
    parser.add_argument("--samples", type=int, default=64, help="samples per train_step")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--completion-len", type=int, default=960)
    parser.add_argument("--micro", default="4,8,16", help="per_device_samples_per_micro_batch values")
    parser.add_argument("--beta", type=float, default=0.04, help="the beta > 0 case; 0 = skip it")
    parser.add_argument("--cases", default="rlft,hf_labels,hf_noloss")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--packing", action="store_true", help="learner.packing=true")
    parser.add_argument("--packed-attention", default="auto", choices=["auto", "varlen", "mask"])
    parser.add_argument("--chunk-tokens", type=int, default=4096, help="learner.logprob_chunk_tokens")
    parser.add_argument("--grad-ckpt", action="store_true", help="learner.gradient_checkpointing=true")
    parser.add_argument("--compile", action="store_true", help="learner.compile=true")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument(
        "--max-tokens", default="", help="token budgets per micro-batch, swept instead of --micro"
    )
    parser.add_argument("--vary-lengths", action="store_true", help="completion lengths in [len/4, len]")
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    peak, peak_rates = measure_peak_tflops()
    rates_text = {k: round(v, 1) for k, v in peak_rates.items()}
    print(f"bf16 matmul TFLOP/s: {rates_text}", flush=True)

    fp32 = args.mixed_precision == "bf16"
    model_cfg, shape = build_model(args.model, Path(tempfile.gettempdir()) / "rlft-bench", fp32)
    seq = args.prompt_len + args.completion_len
    samples = make_samples(
        args.samples, args.prompt_len, args.completion_len, shape["vocab_size"], 0, args.vary_lengths
    )
    lengths = [len(x.prompt_ids) + len(x.completion_ids) for x in samples]
    tokens = sum(lengths)
    budgets = [int(m) for m in args.max_tokens.split(",")] if args.max_tokens else [0]
    micros = [int(m) for m in args.micro.split(",")] if not args.max_tokens else [args.samples]
    cases = args.cases.split(",")

    learner_cfg = LearnerConfig(
        per_device_samples_per_micro_batch=micros[0],
        max_tokens_per_micro_batch=budgets[0],
        packing=args.packing,
        packed_attention=args.packed_attention,
        logprob_chunk_tokens=args.chunk_tokens,
        gradient_checkpointing=args.grad_ckpt,
        compile=args.compile,
        mixed_precision=args.mixed_precision,
    )
    sampling = SamplingConfig(max_new_tokens=args.completion_len)
    learner = Learner(model_cfg, learner_cfg, AlgorithmConfig(beta=0.0), sampling, seed=0)
    n_params = sum({p.data_ptr(): p.numel() for p in learner.model.parameters()}.values())
    attn = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * sum(n * n for n in lengths) / tokens
    check = check_logprobs(learner, collate(samples[:4], learner.pad_token_id).to(learner.device))
    print(f"check: max |logprob - padded full-logit sdpa logprob| = {check:.3g}", flush=True)
    info = {
        "learner_options": {
            k: getattr(learner_cfg, k)
            for k in (
                "packing",
                "packed_attention",
                "logprob_chunk_tokens",
                "gradient_checkpointing",
                "compile",
                "mixed_precision",
            )
        },
        "vary_lengths": args.vary_lengths,
        "logprob_check_max_abs_diff": check,
        "model": args.model,
        "parameters": n_params,
        "seq": seq,
        "samples": args.samples,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "attn_implementation": getattr(learner.model.config, "_attn_implementation", None),
        "peak_tflops": peak,
        "peak_rates": peak_rates,
    }
    print(f"setup {time.perf_counter() - t0:.1f}s: {info}", flush=True)

    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        print(table([result], peak).splitlines()[1], flush=True)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with open(out / "learner_throughput.jsonl", "a") as f:
            f.write(json.dumps({**asdict(result), **info, "host": platform.node(), "date": stamp}) + "\n")

    def run(
        case: str,
        micro: int,
        beta: float,
        step: Callable[[], Any],
        per_token: tuple[float, float],
        budget: int = 0,
    ):
        try:
            result = Result(case, micro, beta, tokens, max_tokens=budget)
            record(time_case(step, result, args.warmup, args.repeats, per_token, peak))
        except Exception:  # record the failure, go on with the other cases
            print(f"FAILED: {case} micro={micro} budget={budget}\n{traceback.format_exc()}", flush=True)
            record(Result(case, micro, beta, tokens, max_tokens=budget, status="error"))

    train_flops = (6 * n_params, 6 * n_params + attn)
    input_ids = collate(samples, learner.pad_token_id).input_ids.to(learner.device)
    for budget in budgets:
        if "rlft" in cases and budget:
            learner.cfg.max_tokens_per_micro_batch = budget
            run("rlft", args.samples, 0.0, lambda: learner.train_step(samples), train_flops, budget)
    for micro in micros if not args.max_tokens else [max(1, budgets[0] // seq)]:
        if "rlft" in cases and not args.max_tokens:
            learner.cfg.per_device_samples_per_micro_batch = micro
            run("rlft", micro, 0.0, lambda: learner.train_step(samples), train_flops)
        learner.optimizer.zero_grad(set_to_none=True)
        if "hf_labels" in cases:
            run(
                "hf_labels",
                micro,
                0.0,
                hf_step(learner.model, input_ids, micro, True, learner_cfg),
                train_flops,
            )
        if "hf_noloss" in cases:
            run(
                "hf_noloss",
                micro,
                0.0,
                hf_step(learner.model, input_ids, micro, False, learner_cfg),
                train_flops,
            )

    ok = [r for r in results if r.case == "rlft" and r.status == "ok"]
    fastest = (
        max(ok, key=lambda r: r.tokens_per_s)
        if ok
        else Result("rlft", micros[0], 0, 0, max_tokens=budgets[0])
    )
    best, best_budget = fastest.micro, fastest.max_tokens
    profile = None
    if not args.no_profile and ok:
        learner.cfg.per_device_samples_per_micro_batch = best
        learner.cfg.max_tokens_per_micro_batch = best_budget
        try:
            profile = profile_step(learner, samples, out, top=15)
        except Exception:
            print(f"profile FAILED\n{traceback.format_exc()}", flush=True)

    if args.beta > 0 and "rlft" in cases:
        del learner
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        cfg = replace(
            learner_cfg, per_device_samples_per_micro_batch=best, max_tokens_per_micro_batch=best_budget
        )
        try:
            ref_learner = Learner(model_cfg, cfg, AlgorithmConfig(beta=args.beta), sampling, seed=0)
            ref_flops = (8 * n_params, 8 * n_params + attn * 4 // 3)
            run("rlft+ref", best, args.beta, lambda: ref_learner.train_step(samples), ref_flops, best_budget)
        except torch.OutOfMemoryError:
            record(Result("rlft+ref", best, args.beta, tokens, max_tokens=best_budget, status="OOM"))

    if profile:
        print(f"\nprofile: one rlft train_step at micro={best}, top kernels by self device time")
        print(profile)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    peak_text = f"{peak:.1f}" if peak else "n/a"
    print(
        f"\nlearner throughput, {args.model} ({n_params:,} params, seq {seq} = "
        f"{args.prompt_len}+{args.completion_len}{' (varied)' if args.vary_lengths else ''}, "
        f"{args.samples} samples/step = {tokens} tokens), {info['learner_options']}, "
        f"{info['device']}, measured bf16 peak {peak_text} TFLOP/s, {when}, total "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print(table(results, peak))


if __name__ == "__main__":
    main()
