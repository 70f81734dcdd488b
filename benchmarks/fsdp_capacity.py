"""The largest Qwen2-shaped model one GPU can train with FSDP2 + gradient checkpointing.

For each size (Qwen2.5 1.5B / 3B / 7B / 14B shapes, random weights) in its own child process:
build the model on the meta device, shard it with rlft's FSDP2 wrapping
(``rlft.learner.distributed.DataParallel.shard``: one ``fully_shard`` unit per decoder block and
one for the rest) over a process group of one rank, allocate it on the GPU, turn on rlft's
gradient checkpointing, and run ``--steps`` training steps of ``--seqs`` x ``--seq-len`` random
tokens through rlft's ``causal_lm_logprobs`` with a
token-mean loss, AdamW and gradient clipping. The log-probs come from the model's own forward
(``chunk_tokens=0``, full logits), as in the recorded runs: they predate 83d8ae8, which made the
chunked LM head work under FSDP2 (it failed with ``aten.embedding got mixed torch.Tensor and
DTensor``, found by this script); the chunked head would need less memory. Precision ``--precision``:

  bf16    parameters, gradients and AdamW state in bf16 (rlft's ``model.dtype=bfloat16``), 8 B/param
  fp32    float32 master parameters, gradients and AdamW state, forward/backward under bf16
          autocast (rlft's ``learner.mixed_precision=bf16``), 16 B/param

Reports the step time, tokens/s, peak memory (``torch.cuda.max_memory_allocated``) or OOM.

  GPU:   python benchmarks/fsdp_capacity.py --sizes 1.5b,3b,7b,14b --precision bf16,fp32 --out $OUT
  CPU dry run: python benchmarks/fsdp_capacity.py --sizes tiny --seq-len 32 --seqs 2

Prints a table last; writes ``<out>/fsdp_capacity.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from grpo_vs_trl import run_child

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
               intermediate_size=11008, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
    "14b": dict(hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                intermediate_size=13824, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip
"""Qwen2.5 shapes (their config.json files)."""


def train_one(size: str, precision: str, seqs: int, seq_len: int, steps: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlft.learner.distributed import DataParallel, open_rendezvous
    from rlft.modeling import causal_lm_logprobs, enable_gradient_checkpointing

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec, store = open_rendezvous(1, device)
    dp = DataParallel(spec, 0, device, store=store)
    param_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPES[size]), dtype=param_dtype)
    params = sum(p.numel() for p in model.parameters())
    dp.shard(model)
    model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        for module in model.modules():  # to_empty left the rotary inverse frequencies uninitialised
            if hasattr(module, "compute_default_rope_parameters"):
                inv_freq, _ = module.compute_default_rope_parameters(module.config)
                module.inv_freq.copy_(inv_freq)
    model.eval()  # as rlft's learner: no dropout; checkpointing flags the decoder layers alone
    enable_gradient_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, SHAPES[size]["vocab_size"], (seqs, seq_len), device=device)
    mask = torch.ones_like(ids)
    times = []
    for _ in range(steps):
        _sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "fp32"):
            logprobs, _ = causal_lm_logprobs(model, ids, mask, chunk_tokens=0, attention_mask=mask)
        loss = -(logprobs.sum() / mask[:, 1:].sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:] or times)
    return {
        "size": size,
        "precision": precision,
        "params": params,
        "loss": loss.item(),
        "times": times,
        "step_s": step,
        "tokens_per_s": seqs * seq_len / step,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0,
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1.5b,3b,7b,14b")
    parser.add_argument("--precision", default="bf16,fp32")
    parser.add_argument("--seqs", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, precision = args.child.split(":")
        try:
            result = train_one(size, precision, args.seqs, args.seq_len, args.steps)
        except torch.OutOfMemoryError as err:
            peak = torch.cuda.max_memory_allocated() / 1e9
            result = {"size": size, "precision": precision, "oom": str(err).splitlines()[0], "peak_gb": peak}
        print("RESULT " + json.dumps(result))
        return

    os.makedirs(args.out, exist_ok=True)
    rows = []
    for precision in args.precision.split(","):
        for size in args.sizes.split(","):
            result = run_child(
                __file__, [*sys.argv[1:], "--child", f"{size}:{precision}"], f"{size} {precision}"
            )
            if result is None:
                continue
            print(json.dumps(result))
            rows.append(result)
            with open(os.path.join(args.out, "fsdp_capacity.jsonl"), "a") as f:
                f.write(json.dumps({**result, "args": vars(args)}) + "\n")
    print(f"\n{args.seqs} x {args.seq_len} tokens per step, FSDP2 (1 rank) + gradient checkpointing, AdamW")
    print("| size | precision | params | step s | tokens/s | peak GB | result |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        if "oom" in r:
            print(f"| {r['size']} | {r['precision']} | - | - | - | {r['peak_gb']:.1f} | OOM |")
        else:
            print(
                f"| {r['size']} | {r['precision']} | {r['params'] / 1e9:.2f}B | {r['step_s']:.2f} | "
                f"{r['tokens_per_s']:,.0f} | {r['peak_gb']:.1f} | ok |"
            )


if __name__ == "__main__":
    main()
