"""DPO steps of rlft and of TRL's ``DPOTrainer``, side by side, on the same model, data and sizes.

Each side runs in its own child process (a clean GPU and memory peak), for ``--steps`` steps; the
first ``--warmup`` are left out of the medians. Default setup (issue 7): a Qwen2.5-0.5B-shaped model
with random weights and a 32k vocabulary in bf16 (weights, gradients and AdamW state in bf16 on
both sides), 16 pairs per step, each sequence (prompt + chosen, prompt + rejected) about 512
tokens: a ``--prompt-tokens`` prompt and ``--completion-tokens`` completions of random words,
sigmoid DPO loss, beta 0.1, one optimizer step per batch of 16 pairs, gradient checkpointing on
both sides or off on both (``--gradient-checkpointing``; TRL's default is on), the reference model a frozen
copy whose log-probs are computed at every step on both sides (every step draws new pairs; rlft
would cache them on a second epoch).

- rlft: ``rlft.trainers.preference.train`` in-process (``cluster.mode=local``); ``train`` =
  rlft's ``timing/train_s`` (policy forward/backward, optimizer), ``reference + other`` = the rest
  of the step (the reference forward, drawing the batch).
- trl: ``DPOTrainer``, step time from a callback around each optimizer step.

Tokens/s counts every token of both sequences of each pair (prompt included), from each side's
own tokenization of the same text.

  GPU:   python benchmarks/dpo_vs_trl.py --out $OUT
  CPU dry run:
    python benchmarks/dpo_vs_trl.py --model tiny --prompt-tokens 16 --completion-tokens 16 --steps 2

Prints a table last; writes ``<out>/dpo_vs_trl.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from grpo_vs_trl import WORDS, peak_gb, reset_peak, run_child, sync
from models import QWEN2_05B, save_random_qwen2


def build_inputs(args: argparse.Namespace, root: Path) -> tuple[Path, Path, str, Path]:
    """(model dir, tokenizer dir, dtype, pairs jsonl): texts cut to the token counts asked for."""
    from transformers import AutoTokenizer

    from rlft.tiny_model import build_tiny_model

    tiny = build_tiny_model(root / "tiny")
    if args.model == "tiny":
        path, dtype = tiny, "float32"
    else:
        path = save_random_qwen2({**QWEN2_05B, "vocab_size": 32000}, root / "qwen2-0.5b-v32k", "bfloat16")
        dtype = "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    rng = random.Random(0)

    def text(tokens: int) -> str:
        ids = tokenizer(" ".join(rng.choices(WORDS, k=2 * tokens)), add_special_tokens=False).input_ids
        return tokenizer.decode(ids[:tokens])

    data = root / "pairs.jsonl"
    if not data.exists():
        with data.open("w") as f:
            for _ in range(args.pairs * (args.steps + 1)):
                row = {
                    "prompt": text(args.prompt_tokens),
                    "chosen": " " + text(args.completion_tokens),
                    "rejected": " " + text(args.completion_tokens),
                }
                f.write(json.dumps(row) + "\n")
    return path, tiny, dtype, data


def run_rlft(
    args: argparse.Namespace, model: Path, tokenizer: Path, dtype: str, data: Path
) -> dict[str, Any]:
    from rlft.cli import load_config
    from rlft.tracking import read_metrics
    from rlft.trainers.preference import train

    out = Path(tempfile.mkdtemp(prefix="rlft-dpo-"))
    cfg = load_config(
        [
            "cluster=local",
            f"model.path={model}",
            f"model.tokenizer_path={tokenizer}",
            f"model.dtype={dtype}",
            f"model.max_prompt_tokens={args.prompt_tokens + 16}",
            f"data.path={data}",
            "data.apply_chat_template=false",
            f"data.global_prompts_per_step={args.pairs}",
            "algorithm=dpo",
            "algorithm.beta=0.1",
            f"rollout.sampling.max_new_tokens={args.completion_tokens + 16}",
            f"learner.per_device_samples_per_micro_batch={2 * args.pairs}",
            "learner.lr=1e-6",
            f"learner.gradient_checkpointing={args.gradient_checkpointing == 'on'}",
            "reward.functions=[]",
            "reward.weights=[]",
            f"trainer.max_steps={args.steps}",
            f"trainer.output_dir={out}",
            "tracking.wandb.enabled=false",
            "tracking.console=false",
            *args.rlft_override,
        ]
    )
    reset_peak()
    train(cfg)
    tokens = _tokens_per_step(args, tokenizer, data, eos=True)
    steps = [
        {"step": r["timing/step_s"], "train": r["timing/train_s"], "tokens": tokens}
        for r in read_metrics(out / "metrics.jsonl")
    ]
    return {"side": "rlft", "steps": steps, "peak_gb": peak_gb()}


def run_trl(
    args: argparse.Namespace, model_dir: Path, tokenizer_dir: Path, dtype: str, data: Path
) -> dict[str, Any]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    steps: list[dict[str, float]] = []
    tokens = _tokens_per_step(args, tokenizer_dir, data, eos=True)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            sync()
            step = time.perf_counter() - self.start
            steps.append({"step": step, "train": step, "tokens": tokens})

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    dataset = datasets.Dataset.from_list([json.loads(line) for line in data.read_text().splitlines()])
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-"),
        per_device_train_batch_size=args.pairs,
        max_length=2 * (args.prompt_tokens + args.completion_tokens),
        learning_rate=1e-6,
        beta=0.1,
        bf16=dtype == "bfloat16",
        gradient_checkpointing=args.gradient_checkpointing == "on",
        max_steps=args.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        **{k: json.loads(v) for k, v in (o.split("=", 1) for o in args.trl_override)},
    )
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()]
    )
    reset_peak()
    trainer.train()
    return {"side": "trl", "steps": steps, "peak_gb": peak_gb()}


def _tokens_per_step(args: argparse.Namespace, tokenizer_dir: Path, data: Path, eos: bool) -> float:
    """Mean tokens of ``args.pairs`` pairs (both sequences, prompt included, EOS after each completion)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    count = 0
    for r in rows:
        p = len(tokenizer(r["prompt"], add_special_tokens=False).input_ids)
        for key in ("chosen", "rejected"):
            count += p + len(tokenizer(r[key], add_special_tokens=False).input_ids) + int(eos)
    return count / len(rows) * args.pairs


def summarize(result: dict[str, Any], warmup: int) -> dict[str, float]:
    steps = result["steps"][warmup:] or result["steps"]
    med = {k: statistics.median(s[k] for s in steps) for k in ("step", "train", "tokens")}
    med["other"] = med["step"] - med["train"]
    med["tokens_per_s"] = med["tokens"] / med["step"]
    med["peak_gb"] = result["peak_gb"]
    return med


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["qwen05b", "tiny"], default="qwen05b")
    parser.add_argument("--sides", default="rlft,trl")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument(
        "--gradient-checkpointing",
        choices=["on", "off"],
        default="on",
        help="on both sides (TRL's DPOConfig turns it on by default)",
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rlft-override", action="append", default=[], help="extra rlft config override")
    parser.add_argument(
        "--trl-override",
        action="append",
        default=[],
        help="extra DPOConfig field, KEY=JSON (e.g. torch_compile=true)",
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        inputs = build_inputs(args, Path(args.root))
        result = run_rlft(args, *inputs) if args.child == "rlft" else run_trl(args, *inputs)
        print("RESULT " + json.dumps(result))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    build_inputs(args, root)
    summaries: dict[str, dict[str, float]] = {}
    for side in args.sides.split(","):
        result = run_child(__file__, [*sys.argv[1:], "--child", side, "--root", str(root)], side)
        if result is None:
            continue
        summaries[side] = summarize(result, args.warmup)
        with (out / "dpo_vs_trl.jsonl").open("a") as f:
            f.write(json.dumps({**result, "summary": summaries[side], "args": vars(args)}) + "\n")
        print(side, json.dumps({k: round(v, 4) for k, v in summaries[side].items()}))
        print("  per-step s:", [round(s["step"], 3) for s in result["steps"]])
    trl = summaries.get("trl")
    print(
        "\n| side | s/step | train | reference + other | tokens/step | tokens/s | peak GB | tokens/s vs TRL |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for side, m in summaries.items():
        ratio = f"{m['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if trl else "-"
        print(
            f"| {side} | {m['step']:.3f} | {m['train']:.3f} | {m['other']:.3f} | {m['tokens']:,.0f} | "
            f"{m['tokens_per_s']:,.0f} | {m['peak_gb']:.1f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
