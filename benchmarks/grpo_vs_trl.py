"""GRPO steps of rlft and of TRL's ``GRPOTrainer``, side by side, on the same model, data and sizes.

Each side runs in its own child process (a clean GPU and memory peak), for ``--steps`` steps; the
first ``--warmup`` are left out of the medians. Default setup (issue 7): a Qwen2.5-0.5B-shaped model
with random weights and a 32k vocabulary in bf16, 8 prompts x 8 completions x 256 new tokens per
step, one AdamW step per RL step (micro-batches of ``--micro``), beta 0, temperature 1, the same
prompts (about 64 tokens) and the same string reward (``rewards/synthetic.py:repeat_char``).
Neither side can stop generation early except on EOS, which a random model rarely samples.

Sides (``--sides``, comma list; one invocation measures them all):

- ``rlft``: ``rlft.trainers.online.train`` in-process (``cluster.mode=local``), the hf engine
  (``--decode`` variants): rollout worker and learner each hold a copy of the model on the one GPU.
- ``rlft-vllm``: the same with ``rollout.engine=vllm``.
- ``rlft-ray``: the path README recommends on a GPU: Ray actors, ``rollout.engine=vllm``,
  ``cluster.colocate=true`` (learner and rollout worker share the GPU; vLLM sleeps while the
  learner trains), every other setting at its default (``weights.transport=auto`` picks CUDA IPC).
- ``trl``: ``GRPOTrainer`` with transformers ``generate``.
- ``trl-vllm``: ``GRPOTrainer(use_vllm=True, vllm_mode="colocate")``, vLLM in the trainer's
  process at ``--vllm-gpu-memory`` of the GPU (TRL's default 0.3; rlft's vLLM sides use the same).

rlft's breakdown comes from its own ``timing/*`` metrics; TRL's from its profiling timers: rollout
= ``vLLM.generate`` / ``transformers.generate``, sync = ``sync_weights``, reward =
``_calculate_rewards``, idle = the rest of ``_prepare_inputs`` (batching, advantages), train =
everything else (loss forward, backward, optimizer). ``idle`` = step - (rollout + reward + train +
sync): orchestration (for rlft-ray it includes vLLM's sleep and wake-up). Peak GB is the child
process's torch peak (for rlft-ray the driver's, which holds no model: not reported).

  GPU:   python benchmarks/grpo_vs_trl.py --steps 6 --out $OUT
  CPU dry run (tiny model, short lengths):
         python benchmarks/grpo_vs_trl.py --model tiny --max-new-tokens 8 --steps 2 --warmup 1

Prints a table last; writes ``<out>/grpo_vs_trl.jsonl`` (one object per side, per-step times included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from models import QWEN2_05B, save_random_qwen2  # benchmarks/models.py (scripts run from here)

ROOT = Path(__file__).resolve().parents[1]
REWARD = "rewards/synthetic.py:repeat_char"
WORDS = ["the", "a", "cat", "dog", "runs", "over", "green", "blue", "house", "tree", "river", "stone"]


def build_inputs(model: str, root: Path, num_prompts: int) -> tuple[Path, Path, str, Path]:
    """(model dir, tokenizer dir, dtype, prompts jsonl) shared by both sides."""
    from rlft.tiny_model import build_tiny_model

    tiny = build_tiny_model(root / "tiny")
    if model == "tiny":
        path, dtype = tiny, "float32"
    else:
        path = save_random_qwen2({**QWEN2_05B, "vocab_size": 32000}, root / "qwen2-0.5b-v32k", "bfloat16")
        dtype = "bfloat16"
        for f in tiny.iterdir():  # vLLM (TRL's) loads the tokenizer from the model's directory
            if f.name.startswith("tokenizer") or f.suffix == ".jinja":
                shutil.copy(f, path)
    rng = random.Random(0)
    data = root / "prompts.jsonl"
    with data.open("w") as f:
        for _ in range(num_prompts):
            digit = str(rng.randint(0, 9))
            filler = " ".join(rng.choices(WORDS, k=40))
            f.write(json.dumps({"prompt": f"{filler}. Repeat this digit: {digit}", "answer": digit}) + "\n")
    return path, tiny, dtype, data


def placement(side: str, args: argparse.Namespace) -> list[str]:
    """The rlft overrides that make ``side`` what the module docstring says."""
    gpu = torch.cuda.is_available()
    vllm = [
        "rollout.engine=vllm",
        f"rollout.vllm.gpu_memory_utilization={args.vllm_gpu_memory}",
        f"rollout.vllm.max_model_len={args.max_model_len}",
        *([] if gpu else ["rollout.vllm.enforce_eager=true"]),
    ]
    decode = args.decode.split("+")
    hf = ["rollout.engine=hf", f"rollout.hf.decode={decode[0]}", f"rollout.hf.compile={'compile' in decode}"]
    if side == "rlft":
        return ["cluster=local", *hf]
    if side == "rlft-vllm":
        return ["cluster=local", *vllm]
    if side == "rlft-ray":
        ray = ["cluster.mode=ray", f"cluster.num_cpus={min(os.cpu_count() or 2, 8)}"]
        if gpu:  # one bundle of one GPU: learner and rollout worker half each
            ray += ["cluster.colocate=true", "learner.num_gpus_per_worker=1"]
            ray += ["rollout.vllm.enable_sleep_mode=true"]
        return [*ray, *vllm]
    raise ValueError(f"unknown rlft side {side!r}")


def run_rlft(
    args: argparse.Namespace, model: Path, tokenizer: Path, dtype: str, data: Path
) -> dict[str, Any]:
    from rlft.cli import load_config
    from rlft.tracking import read_metrics
    from rlft.trainers.online import train

    out = Path(tempfile.mkdtemp(prefix="rlft-grpo-"))
    cfg = load_config(
        [
            *placement(args.child, args),
            f"model.path={model}",
            f"model.tokenizer_path={tokenizer}",
            f"model.dtype={dtype}",
            f"data.path={data}",
            "data.apply_chat_template=false",
            f"data.global_prompts_per_step={args.prompts}",
            "algorithm=grpo",
            f"algorithm.group_size={args.group}",
            "algorithm.beta=0.0",
            f"rollout.sampling.max_new_tokens={args.max_new_tokens}",
            f"learner.per_device_samples_per_micro_batch={args.micro}",
            "learner.lr=1e-6",
            "weights.bucket_mb=1024",
            f"reward.functions=[{REWARD}]",
            f"trainer.max_steps={args.steps}",
            f"trainer.output_dir={out}",
            "tracking.wandb.enabled=false",
            "tracking.console=false",
            *args.rlft_override,
        ]
    )
    reset_peak()
    train(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    steps = [
        {
            "step": r["timing/step_s"],
            "rollout": r["timing/rollout_s"],
            "reward": r["timing/reward_s"],
            "logprobs": 0.0,  # beta 0, one optimizer step per RL step: no extra forward pass
            "train": r["timing/train_s"],
            "sync": r["timing/weight_sync_s"],
            "completion_tokens": r["response_len/mean"] * args.prompts * args.group,
            "logprob_gap": r.get("logprob_diff/sampler", float("nan")),
        }
        for r in rows
    ]
    peak = float("nan") if args.child == "rlft-ray" else peak_gb()
    return {"side": args.child, "decode": args.decode, "steps": steps, "peak_gb": peak}


def run_trl(
    args: argparse.Namespace, model_dir: Path, tokenizer_dir: Path, dtype: str, data: Path
) -> dict[str, Any]:
    import datasets
    import trl.extras.profiling as profiling
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(ROOT))
    from rewards.synthetic import repeat_char as score

    def repeat_char(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return score(prompts, completions, answer)  # TRL also passes ids and trainer state

    timers: dict[str, float] = {}

    def record(self: Any, duration: float) -> None:  # TRL's profiling timers, summed per step
        timers[self.name] = timers.get(self.name, 0.0) + duration

    profiling.ProfilingContext._log_metrics = record
    steps: list[dict[str, float]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            sync()
            timers.clear()
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            sync()
            t = dict(timers)
            step = time.perf_counter() - self.start
            rollout = sum(v for n, v in t.items() if n.endswith(("generate", "generate_batch")))
            reward = t.get("GRPOTrainer._calculate_rewards", 0.0)
            weight_sync = t.get("GRPOTrainer.sync_weights", 0.0)
            # _prepare_inputs (every micro-batch) = weight sync + generation + rewards + batching
            # and advantages
            prep = t.get("GRPOTrainer._prepare_inputs", 0.0) - rollout - reward - weight_sync
            train = step - rollout - reward - weight_sync - prep  # loss forward, backward, optimizer
            steps.append(
                {
                    "step": step,
                    "rollout": rollout,
                    "reward": reward,
                    "train": train,
                    "sync": weight_sync,
                    "timers": t,
                }
            )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    dataset = datasets.Dataset.from_list([json.loads(line) for line in data.read_text().splitlines()])
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-"),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.prompts * args.group // args.micro,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        learning_rate=1e-6,
        beta=0.0,
        temperature=1.0,
        bf16=dtype == "bfloat16",
        max_steps=args.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        **(
            {
                "use_vllm": True,
                "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": args.vllm_gpu_memory,
                "vllm_max_model_length": args.max_model_len or None,
            }
            if args.child == "trl-vllm"
            else {}
        ),
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=repeat_char,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    reset_peak()
    trainer.train()
    lengths = [
        r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r
    ]
    for s, length in zip(steps, lengths, strict=False):
        s["completion_tokens"] = length * args.prompts * args.group
        s["logprobs"] = 0.0
    return {"side": args.child, "steps": steps, "peak_gb": peak_gb()}


def run_child(script: str, argv: list[str], label: str) -> dict[str, Any] | None:
    """``script argv`` in a child process: its result (the last ``RESULT {json}`` line it
    printed), or None after showing the end of its output."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, cwd=ROOT)
    print(f"--- {label}: rc={proc.returncode} in {time.perf_counter() - start:.0f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else float("nan")


PARTS = ("rollout", "reward", "logprobs", "train", "sync")
SIDES = ("rlft", "rlft-vllm", "rlft-ray", "trl", "trl-vllm")


def summarize(result: dict[str, Any], warmup: int) -> dict[str, float]:
    """Medians over the steps after ``warmup``; ``idle`` = step - the named parts."""
    steps = result["steps"][warmup:] or result["steps"]
    med = {k: statistics.median(s[k] for s in steps) for k in ("step", *PARTS, "completion_tokens")}
    med["idle"] = statistics.median(s["step"] - sum(s[p] for p in PARTS) for s in steps)
    med["tokens_per_s"] = med["completion_tokens"] / med["step"]
    med["peak_gb"] = result["peak_gb"]
    med["logprob_gap"] = statistics.median(s.get("logprob_gap", float("nan")) for s in steps)
    return med


def table(
    rows: list[tuple[str, dict[str, float]]], reference: dict[str, float] | None, reference_name: str
) -> str:
    head = (
        "| side | s/step | rollout | reward | logprobs | train | sync | idle (%) | completion tok/s "
        f"| peak GB | {reference_name} s / side s |"
    )
    lines = [head, "|" + "---|" * 11]
    for name, m in rows:
        ratio = f"{reference['step'] / m['step']:.2f}x" if reference else "-"
        lines.append(
            f"| {name} | {m['step']:.3f} | {m['rollout']:.3f} | {m['reward']:.3f} | {m['logprobs']:.3f} | "
            f"{m['train']:.3f} | {m['sync']:.3f} | {m['idle']:.3f} ({100 * m['idle'] / m['step']:.1f}%) | "
            f"{m['tokens_per_s']:,.0f} | {m['peak_gb']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["qwen05b", "tiny"], default="qwen05b")
    parser.add_argument(
        "--sides",
        default="trl-vllm,rlft-ray,rlft-vllm,rlft",
        help=f"comma list of {', '.join(SIDES)}",
    )
    parser.add_argument(
        "--decode",
        default="static",
        help="comma list of rlft variants: a rollout.hf.decode value, +compile for rollout.hf.compile=true",
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--micro", type=int, default=16, help="samples per forward/backward, both sides")
    parser.add_argument(
        "--vllm-gpu-memory", type=float, default=0.3, help="vLLM's GPU share, every vLLM side"
    )
    parser.add_argument(
        "--max-model-len", type=int, default=0, help="vLLM's longest sequence (0: the model's own)"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rlft-override", action="append", default=[], help="extra rlft config override")
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one side, in this process; result as JSON on the last stdout line
        inputs = build_inputs(args.model, Path(args.root), 64)
        result = run_rlft(args, *inputs) if args.child.startswith("rlft") else run_trl(args, *inputs)
        print("RESULT " + json.dumps(result))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    build_inputs(args.model, root, 64)
    sides = args.sides.split(",")
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"--sides: {sorted(unknown)} not among {SIDES}")
    cases = [(side, d) for side in sides for d in (args.decode.split(",") if side == "rlft" else ["-"])]
    rows: list[tuple[str, dict[str, float]]] = []
    results: dict[str, dict[str, float]] = {}
    for side, decode in cases:
        argv = [*sys.argv[1:], "--child", side, "--root", str(root), "--decode", decode]
        result = run_child(__file__, argv, f"{side} decode={decode}")
        if result is None:
            continue
        summary = summarize(result, args.warmup)
        with (out / "grpo_vs_trl.jsonl").open("a") as f:
            f.write(json.dumps({**result, "summary": summary, "args": vars(args)}) + "\n")
        name = f"rlft ({decode})" if side == "rlft" else side
        print(name, json.dumps({k: round(v, 4) for k, v in summary.items()}))
        print("  per-step s:", [round(s["step"], 3) for s in result["steps"]])
        rows.append((name, summary))
        results[side] = summary
    reference = results.get("trl-vllm") or results.get("trl")  # TRL + vLLM first: what GPU users run
    print()
    print(table(rows, reference, "TRL+vLLM" if "trl-vllm" in results else "TRL"))


if __name__ == "__main__":
    main()
