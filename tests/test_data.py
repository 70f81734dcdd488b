"""Prompt sources: built-in tasks, local files, order, resume position, prompt-length errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlft.config import DataConfig
from rlft.data.prompts import PromptSampler, format_prompt, tokenize_prompts


def test_builtin_task_rows_are_deterministic_and_carry_ground_truth() -> None:
    a = PromptSampler(DataConfig(path="builtin:repeat_digit"), seed=1).sample(5)
    b = PromptSampler(DataConfig(path="builtin:repeat_digit"), seed=1).sample(5)
    assert a == b
    for row in a:
        assert row["prompt"] == f"Repeat this digit: {row['answer']}"


def test_unknown_builtin_task() -> None:
    with pytest.raises(ValueError, match="known: repeat_digit"):
        PromptSampler(DataConfig(path="builtin:nope"), seed=0)


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "answer": str(i)}) + "\n" for i in range(7)))
    cfg = DataConfig(path=str(path))
    full = PromptSampler(cfg, seed=3)
    expected = full.sample(4) + full.sample(6)  # crosses an epoch boundary
    first = PromptSampler(cfg, seed=3)
    first.sample(4)
    resumed = PromptSampler(cfg, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert expected[4:] == resumed.sample(6)
    # every row appears once per epoch
    assert sorted(r["prompt"] for r in expected[:7]) == [f"p{i}" for i in range(7)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_file_formats(tmp_path: Path, suffix: str) -> None:
    import pandas as pd

    frame = pd.DataFrame({"question": ["a", "b"], "answer": ["1", "2"]})
    path = tmp_path / f"d{suffix}"
    {
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    sampler = PromptSampler(DataConfig(path=str(path), prompt_column="question"), seed=0)
    assert sampler.columns == ["question", "answer"]
    assert {r["question"] for r in sampler.sample(2)} == {"a", "b"}


def test_missing_file_and_missing_prompt_column(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        PromptSampler(DataConfig(path=str(tmp_path / "missing.jsonl")), seed=0)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"data.prompt_column='prompt'.*\['question'\]"):
        PromptSampler(DataConfig(path=str(path)), seed=0)


def test_chat_template_and_prompt_length(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = DataConfig(system_prompt="Be brief.")
    text = format_prompt(tokenizer, "Repeat this digit: 3", cfg)
    assert text.index("Be brief.") < text.index("Repeat this digit: 3")
    assert text.endswith("assistant\n")
    raw = DataConfig(apply_chat_template=False)
    assert format_prompt(tokenizer, "x", raw) == "x"
    ids = tokenize_prompts(tokenizer, ["Repeat this digit: 3"], raw, max_tokens=64)
    assert tokenizer.decode(ids[0]) == "Repeat this digit: 3"
    with pytest.raises(ValueError, match=r"model\.max_prompt_tokens=4"):
        tokenize_prompts(tokenizer, ["Repeat this digit: 3"], raw, max_tokens=4)
