"""Prompt sources: built-in tasks, local files, order, resume position, prompt-length errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rlft.config import DataConfig
from rlft.data.prompts import (
    PromptSampler,
    format_prompt,
    has_eval_split,
    load_prompt_rows,
    tokenize_prompts,
)


def test_builtin_task_rows_are_deterministic_and_carry_ground_truth() -> None:
    a = PromptSampler(DataConfig(path="builtin:repeat_digit"), seed=1).sample(5)
    b = PromptSampler(DataConfig(path="builtin:repeat_digit"), seed=1).sample(5)
    assert a == b
    for row in a:
        assert row["prompt"] == f"Repeat this digit: {row['answer']}"


def test_unknown_builtin_task() -> None:
    with pytest.raises(ValueError, match="known: arithmetic, repeat_digit"):
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


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_column_mapping_renames_and_names_missing_columns(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "d.jsonl", [{"question": "q1", "final_answer": "1", "answer": "work... #### 1"}]
    )
    cfg = DataConfig(path=str(path), columns={"prompt": "question", "answer": "final_answer"})
    sampler = PromptSampler(cfg, seed=0)
    # the renamed final_answer replaces the dataset's own answer column
    assert sampler.sample(1) == [{"prompt": "q1", "answer": "1"}]
    assert sorted(sampler.columns) == ["answer", "prompt"]
    bad = DataConfig(path=str(path), columns={"prompt": "problem"})
    with pytest.raises(
        ValueError, match=r"data.columns.prompt='problem'.*\['question', 'final_answer', 'answer'\]"
    ):
        PromptSampler(bad, seed=0)


def test_prompt_template_fills_columns_and_keeps_other_braces(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"nums": [3, 5], "target": 8}])
    template = r"Use {nums} to make {target}; answer in \boxed{} or {{literal}}."
    rows = load_prompt_rows(DataConfig(path=str(path), eval_path=str(path), prompt_template=template), "eval")
    assert rows.rows[0]["prompt"] == r"Use [3, 5] to make 8; answer in \boxed{} or {literal}."
    assert rows.rows[0]["target"] == 8  # ground truth columns are kept as they are
    with pytest.raises(ValueError, match=r"placeholder \{num\}.*\['nums', 'target'\]"):
        PromptSampler(DataConfig(path=str(path), prompt_template="{num}"), seed=0)


def test_too_long_prompts_are_filtered_and_counted(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "Repeat this digit: 3", "answer": "3"}] * 3 + [{"prompt": "7 " * 100, "answer": "7"}]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(path=str(path), apply_chat_template=False)
    sampler = PromptSampler(cfg, seed=0, tokenizer=tokenizer, max_prompt_tokens=32)
    assert sampler.num_filtered_too_long == 1
    assert {r["answer"] for r in sampler.sample(9)} == {"3"}  # three epochs of the three short rows
    assert PromptSampler(cfg, seed=0).sample(4)[-1] is not None  # without a tokenizer nothing is checked
    with pytest.raises(ValueError, match=r"1 of 4 prompts.*data.on_too_long=filter"):
        PromptSampler(replace(cfg, on_too_long="error"), seed=0, tokenizer=tokenizer, max_prompt_tokens=32)
    with pytest.raises(ValueError, match="every prompt"):
        PromptSampler(cfg, seed=0, tokenizer=tokenizer, max_prompt_tokens=2)
    # a chat template counts: the wrapped prompt is longer than the raw one
    chat = replace(cfg, apply_chat_template=True)
    raw_len = len(tokenizer("Repeat this digit: 3")["input_ids"])
    with pytest.raises(ValueError, match="every prompt"):
        PromptSampler(chat, seed=0, tokenizer=tokenizer, max_prompt_tokens=raw_len + 1)


def test_builtin_task_filters_as_it_generates(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # a template that makes prompts with digit 9 longer than the limit
    cfg = DataConfig(path="builtin:repeat_digit", apply_chat_template=False, prompt_template="{prompt}")
    limit = len(tokenizer("Repeat this digit: 3")["input_ids"])
    long_nine = replace(cfg, prompt_template="Repeat this digit: {answer}" + "{answer}" * 40)
    fine = PromptSampler(cfg, seed=0, tokenizer=tokenizer, max_prompt_tokens=limit).sample(20)
    assert len(fine) == 20
    sampler = PromptSampler(long_nine, seed=0, tokenizer=tokenizer, max_prompt_tokens=limit)
    with pytest.raises(ValueError, match="every prompt"):
        sampler.sample(1)  # every generated prompt is too long: stops instead of looping forever


def test_eval_fraction_holds_out_a_seeded_disjoint_split(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}"} for i in range(20)])
    cfg = DataConfig(path=str(path), eval_fraction=0.25)
    assert has_eval_split(cfg) and not has_eval_split(DataConfig(path=str(path)))
    held_out = [r["prompt"] for r in load_prompt_rows(cfg, "eval").rows]
    train = [r["prompt"] for r in load_prompt_rows(cfg, "train").rows]
    assert len(held_out) == 5 and len(train) == 15
    assert sorted(held_out + train, key=lambda p: int(p[1:])) == [f"p{i}" for i in range(20)]
    # the sampler (any trainer seed) never draws a held-out row; the split depends on eval_seed only
    for seed in (0, 7):
        assert not {r["prompt"] for r in PromptSampler(cfg, seed=seed).sample(45)} & set(held_out)
    assert [r["prompt"] for r in load_prompt_rows(cfg, "eval").rows] == held_out
    other = [r["prompt"] for r in load_prompt_rows(replace(cfg, eval_seed=1), "eval").rows]
    assert other != held_out
    assert len(load_prompt_rows(replace(cfg, eval_size=2), "eval").rows) == 2


def test_eval_sources(tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    test = _write_jsonl(tmp_path / "test.jsonl", [{"prompt": "x"}, {"prompt": "y"}, {"prompt": "z"}])
    rows = load_prompt_rows(DataConfig(path=str(train), eval_path=str(test)), "eval").rows
    assert [r["prompt"] for r in rows] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="no evaluation split"):
        load_prompt_rows(DataConfig(path=str(train)), "eval")
    with pytest.raises(ValueError, match=r"data\.eval_path=<eval file>"):
        load_prompt_rows(DataConfig(path=str(train), eval_split="test"), "eval")
    # a dataset folder goes through datasets.load_dataset like a hub name: splits by file name
    folder = tmp_path / "hubish"
    folder.mkdir()
    (folder / "train.jsonl").write_text(train.read_text())
    (folder / "test.jsonl").write_text(test.read_text())
    cfg = DataConfig(path=str(folder), eval_split="test")
    assert {r["prompt"] for r in PromptSampler(cfg, seed=0).sample(2)} == {"a", "b"}
    assert len(load_prompt_rows(cfg, "eval").rows) == 3


def test_builtin_eval_rows() -> None:
    cfg = DataConfig(path="builtin:repeat_digit", eval_size=6)
    assert has_eval_split(cfg) and not has_eval_split(DataConfig(path="builtin:repeat_digit"))
    rows = load_prompt_rows(cfg, "eval").rows
    assert rows == load_prompt_rows(cfg, "eval").rows and len(rows) == 6
    # not the training stream of the same seed
    assert rows != PromptSampler(cfg, seed=cfg.eval_seed).sample(6)
    with pytest.raises(ValueError, match=r"data\.eval_size"):
        load_prompt_rows(DataConfig(path="builtin:repeat_digit"), "eval")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"on_too_long": "drop"}, "data.on_too_long"),
        ({"eval_fraction": 1.0}, r"data.eval_fraction=1.0 out of range: it must be >= 0 and < 1"),
        ({"eval_fraction": 0.1, "eval_split": "test"}, "leave data.eval_split"),
        ({"columns": {"prompt": "q", "question": "q"}}, "renames one dataset column twice"),
        ({"path": "builtin:repeat_digit", "eval_fraction": 0.1}, "data.eval_size"),
    ],
)
def test_data_config_checks(overrides: dict, message: str) -> None:
    from rlft.config import RLFTConfig
    from rlft.validation import validate

    cfg = RLFTConfig()
    cfg.reward.functions = ["rewards/synthetic.py:repeat_char"]
    cfg.data = replace(cfg.data, **overrides)
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_preference_data_columns_split_and_too_long(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from rlft.data.preference import load_preference_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"instruction": f"Repeat this digit: {i % 10}", "good": "7", "bad": "3"} for i in range(9)]
    rows.append({"instruction": "7 " * 100, "good": "7", "bad": "3"})
    path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = DataConfig(
        path=str(path),
        apply_chat_template=False,
        columns={"prompt": "instruction", "chosen": "good", "rejected": "bad"},
        eval_fraction=0.2,
    )
    train = load_preference_data(cfg, tokenizer, False, max_prompt_tokens=32, max_completion_tokens=8)
    held_out = load_preference_data(cfg, tokenizer, False, 32, 8, split="eval")
    assert len(train.examples) + train.num_filtered_too_long == 8
    assert len(held_out.examples) + held_out.num_filtered_too_long == 2
    assert train.num_filtered_too_long + held_out.num_filtered_too_long == 1
    assert tokenizer.decode(train.examples[0].chosen_ids) == "7" + tokenizer.eos_token
    with pytest.raises(ValueError, match=r"data\.on_too_long=filter"):
        load_preference_data(replace(cfg, eval_fraction=0.0, on_too_long="error"), tokenizer, False, 32, 8)


# --- scripts/prepare_*.py, on small local files in the layouts of the real datasets -------------

ROOT = Path(__file__).resolve().parents[1]


def _load_module(relative: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_gsm8k(tmp_path: Path) -> None:
    src = _write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "Tom has 3 apples...", "answer": "3 * 360 = <<3*360=1080>>1080\n#### 1,080"},
            {"question": "How many?", "answer": "2 + 2 = 4\n#### 4"},
        ],
    )
    _load_module("scripts/prepare_gsm8k.py").main(["--src", str(src), "--out", str(tmp_path / "out.jsonl")])
    rows = _read_jsonl(tmp_path / "out.jsonl")
    assert [(r["prompt"], r["answer"]) for r in rows] == [("Tom has 3 apples...", "1080"), ("How many?", "4")]
    gsm8k = _load_module("rewards/gsm8k.py").gsm8k
    assert gsm8k(["p"] * 2, ["so #### 1080", "The answer is 5."], [r["answer"] for r in rows]) == [1.0, 0.0]
    _write_jsonl(src, [{"question": "q", "answer": "no final line"}])
    with pytest.raises(ValueError, match="####"):
        _load_module("scripts/prepare_gsm8k.py").main(["--src", str(src), "--out", str(tmp_path / "x.jsonl")])


def test_prepare_math_layouts(tmp_path: Path) -> None:
    prepare = _load_module("scripts/prepare_math.py")
    math_rows = [
        {
            "problem": "Half of 1?",
            "solution": r"It is $\boxed{\frac{1}{2}}$.",
            "level": "Level 3",
            "type": "Algebra",
        },
        {"problem": "Easy", "solution": r"$\boxed{2}$", "level": "Level 1", "type": "Algebra"},
    ]
    src = _write_jsonl(tmp_path / "math.jsonl", math_rows)
    out = tmp_path / "math_out.parquet"
    prepare.main(["--src", str(src), "--levels", "3,4,5", "--out", str(out)])
    rows = load_prompt_rows(DataConfig(path=str(out), eval_path=str(out)), "eval").rows
    assert rows == [{"prompt": "Half of 1?", "answer": r"\frac{1}{2}", "level": "Level 3", "type": "Algebra"}]
    assert prepare.convert({"problem": "p", "answer": "7", "subject": "x"}) == {
        "prompt": "p",
        "answer": "7",
        "subject": "x",
    }
    dapo = {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": "Solve 1+1."}],
        "reward_model": {"ground_truth": "2", "style": "rule"},
    }
    src = _write_jsonl(tmp_path / "dapo.jsonl", [dapo])
    prepare.main(["--src", str(src), "--out", str(tmp_path / "dapo_out.jsonl")])
    assert _read_jsonl(tmp_path / "dapo_out.jsonl") == [{"prompt": "Solve 1+1.", "answer": "2"}]
    with pytest.raises(ValueError, match="unknown math layout"):
        prepare.convert({"question": "q"})


def test_prepare_countdown_generates_solvable_distinct_puzzles(tmp_path: Path) -> None:
    prepare = _load_module("scripts/prepare_countdown.py")
    evaluate = _load_module("rewards/countdown.py").evaluate
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    prepare.main(
        ["--num", "200", "--test-num", "20", "--seed", "3", "--out", str(train), "--test-out", str(test)]
    )
    rows, held_out = _read_jsonl(train), _read_jsonl(test)
    assert len(rows) == 200 and len(held_out) == 20
    keys = {(r["target"], tuple(sorted(r["nums"]))) for r in rows + held_out}
    assert len(keys) == 220  # distinct, and the held-out puzzles are not training ones
    for row in rows + held_out:
        assert 3 <= len(row["nums"]) <= 4 and all(1 <= n <= 99 for n in row["nums"])
        assert 1 <= row["target"] <= 100
        assert evaluate(row["solution"], row["nums"]) == row["target"]
    again = tmp_path / "again.jsonl"
    prepare.main(["--num", "200", "--seed", "3", "--out", str(again)])
    assert _read_jsonl(again) == rows  # seeded
    src = _write_jsonl(tmp_path / "tinyzero.jsonl", [{"target": 24, "nums": [3, 8, 1]}])
    prepare.main(["--src", str(src), "--out", str(tmp_path / "copied.jsonl")])
    assert _read_jsonl(tmp_path / "copied.jsonl") == [{"target": 24, "nums": [3, 8, 1]}]


def _conversation(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_prepare_preference_ultrafeedback_layout(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from rlft.data.preference import load_preference_data

    prepare = _load_module("scripts/prepare_preference.py")
    rows = [
        {
            "prompt": "Say hi",
            "prompt_id": "a",
            "chosen": _conversation("Say hi", "Hi!"),
            "rejected": _conversation("Say hi", "No."),
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        },
        {  # a tie: skipped
            "prompt": "Same",
            "prompt_id": "b",
            "chosen": _conversation("Same", "x"),
            "rejected": _conversation("Same", "x"),
            "score_chosen": 5.0,
            "score_rejected": 5.0,
        },
    ]
    src = _write_jsonl(tmp_path / "uf.jsonl", rows)
    out = tmp_path / "uf_out.jsonl"
    prepare.main(["--src", str(src), "--out", str(out)])
    pairs = _read_jsonl(out)
    assert pairs == [
        {
            "prompt": [{"role": "user", "content": "Say hi"}],
            "chosen": [{"role": "assistant", "content": "Hi!"}],
            "rejected": [{"role": "assistant", "content": "No."}],
        }
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = load_preference_data(DataConfig(path=str(out)), tokenizer, False, 64, 16)
    pair = data.examples[0]
    assert tokenizer.decode(pair.prompt_ids).endswith("assistant\n")
    assert tokenizer.decode(pair.chosen_ids) == "Hi!" + tokenizer.eos_token
    prepare.main(["--src", str(src), "--format", "text", "--out", str(out)])
    assert _read_jsonl(out) == [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}]


def test_prepare_preference_hh_layout(tmp_path: Path) -> None:
    prepare = _load_module("scripts/prepare_preference.py")
    context = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
    rows = [
        {
            "chosen": context + "\n\nAssistant: Why did the chicken...",
            "rejected": context + "\n\nAssistant: No.",
        },
        {
            "chosen": "\n\nHuman: A\n\nAssistant: B",
            "rejected": "\n\nHuman: C\n\nAssistant: D",
        },  # no shared prompt
    ]
    src = _write_jsonl(tmp_path / "hh.jsonl", rows)
    out = tmp_path / "hh_out.jsonl"
    prepare.main(["--src", str(src), "--format", "text", "--out", str(out)])
    assert _read_jsonl(out) == [
        {"prompt": context + "\n\nAssistant:", "chosen": " Why did the chicken...", "rejected": " No."}
    ]
    prepare.main(["--src", str(src), "--out", str(out)])
    [pair] = _read_jsonl(out)
    assert pair["prompt"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert pair["chosen"] == [{"role": "assistant", "content": "Why did the chicken..."}]
    with pytest.raises(ValueError, match="unknown preference layout"):
        prepare.detect_layout({"prompt": "p", "chosen": "plain text", "rejected": "x"})


def test_conversation_prompts(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Repeat this digit: 4"},
    ]
    text = format_prompt(tokenizer, conversation, DataConfig(system_prompt="Be brief."))
    assert text.index("Be brief.") < text.index("Hello") < text.index("Repeat this digit: 4")
    system = {"role": "system", "content": "Be brief."}
    messages = [system, *conversation]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == expected
    with pytest.raises(ValueError, match="apply_chat_template=true"):
        format_prompt(tokenizer, conversation, DataConfig(apply_chat_template=False))
    path = _write_jsonl(tmp_path / "chats.jsonl", [{"messages": conversation, "answer": "4"}])
    cfg = DataConfig(path=str(path), columns={"prompt": "messages"})
    sampler = PromptSampler(cfg, seed=0, tokenizer=tokenizer, max_prompt_tokens=256)
    assert sampler.sample(1)[0]["prompt"] == conversation
