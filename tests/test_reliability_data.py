"""Issue 15 (reliability), item 4: a bad data file ends in rlft's exit-2 error naming the file
and the line, for prompt and preference data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from rlft.cli import main
from rlft.config import DataConfig
from rlft.data import load_prompt_rows

GOOD = '{"prompt": "Repeat this digit: 1", "answer": "1"}\n'

BAD_FILES = {
    "malformed.jsonl": (GOOD * 2 + '{"prompt": "x", "answer": \n' + GOOD).encode(),
    "empty.jsonl": b"",
    "blank.jsonl": b"\n  \n",
    "not_utf8.jsonl": (GOOD + '{"prompt": "caf\xe9", "answer": "1"}\n').encode("latin-1"),
    "array.jsonl": (GOOD + '["prompt", "answer"]\n').encode(),
    "short_row.csv": b"prompt,answer\nRepeat this digit: 1,1\nRepeat,2,3\n",
    "not_utf8.csv": "prompt,answer\nRepeat,1\ncaf\xe9,2\n".encode("latin-1"),
    "empty.csv": b"",
    "garbage.parquet": b"PAR1 this is not a parquet file",
}
EXPECTED = {
    "malformed.jsonl": "line 3, column 27: not valid JSON (Expecting value)",
    "empty.jsonl": "the file is empty",
    "blank.jsonl": "has no rows: every line is blank",
    "not_utf8.jsonl": "line 2: not UTF-8 text (byte 0xe9",
    "array.jsonl": "line 2: a JSON list, not an object",
    "short_row.csv": "cannot be read as csv: ParserError: Error tokenizing data. C error: Expected 2 fields in line 3",  # noqa: E501
    "not_utf8.csv": "line 3: not UTF-8 text (byte 0xe9",
    "empty.csv": "the file is empty",
    "garbage.parquet": "cannot be read as parquet: ArrowInvalid",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_prompt_file_is_named_with_its_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(ValueError) as raised:
        load_prompt_rows(DataConfig(path=str(path)), "train")
    assert str(raised.value).startswith(f"data.path={str(path)!r}")
    assert EXPECTED[name] in str(raised.value)


def test_a_good_parquet_file_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "ok.parquet"
    pd.DataFrame([{"prompt": "a", "answer": "1"}]).to_parquet(path)
    assert load_prompt_rows(DataConfig(path=str(path)), "train").rows == [{"prompt": "a", "answer": "1"}]


def test_bad_prompt_and_preference_files_exit_2_naming_file_and_line(
    quickstart_args: Callable[..., list[str]], tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(BAD_FILES["malformed.jsonl"])
    assert main(quickstart_args(tmp_path / "run", "cluster.mode=local", f"data.path={prompts}")) == 2
    err = capsys.readouterr().err
    assert f"rlft: error: data.path={str(prompts)!r}, line 3, column 27: not valid JSON" in err
    assert "Traceback" not in err

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"prompt": "a", "chosen": "1", "rejected": "2"}\n' + b'{"prompt": "\xff"}\n')
    args = [
        "train",
        "recipe=dpo_quickstart",
        f"model.path={tiny_model_dir}",
        f"data.path={pairs}",
        f"trainer.output_dir={tmp_path / 'dpo'}",
        "tracking.wandb.enabled=false",
        "cluster.mode=local",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"rlft: error: data.path={str(pairs)!r}, line 2: not UTF-8 text (byte 0xff" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "dpo").exists()
