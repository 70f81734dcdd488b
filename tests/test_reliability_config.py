"""Issue 15 (reliability), items 5 and 6: every numeric key has a declared range checked before
anything starts, and a model's context bounds the prompt length."""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from rlft.cli import ConfigError, load_config, main
from rlft.config import RLFTConfig


def _numeric_keys(node: type, prefix: str = "") -> list[tuple[str, object]]:
    """(key, field) of every int/float (or list of them, or optional one) field of the schema."""
    hints = typing.get_type_hints(node)
    found = []
    for f in fields(node):
        hint = hints[f.name]
        if is_dataclass(hint):
            found += _numeric_keys(hint, f"{prefix}{f.name}.")
            continue
        args = set(typing.get_args(hint)) - {type(None)}
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
            hint = args.pop()
        if typing.get_origin(hint) is list:
            hint = typing.get_args(hint)[0]
        if hint in (int, float):
            found.append((f"{prefix}{f.name}", f))
    return found


def test_every_numeric_key_declares_a_range() -> None:
    keys = _numeric_keys(RLFTConfig)
    assert len(keys) > 80
    undeclared = [key for key, f in keys if "range" not in f.metadata]
    assert not undeclared, f"numeric keys without bounded(...) in rlft/config.py: {undeclared}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learner.lr=-0.001", "learner.lr=-0.001 out of range: it must be > 0"),
        ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1 out of range: it must be >= 0"),
        ("rollout.sampling.max_new_tokens=0", "rollout.sampling.max_new_tokens=0 out of range"),
        ("learner.betas=[0.9,1.5]", "learner.betas=[0.9, 1.5] has an entry out of range"),
        ("learner.lr=nan", "learner.lr=nan out of range"),
        ("algorithm.top_p=2", "algorithm.top_p"),  # not a key of algorithm: unknown key
        ("rollout.sampling.top_p=0", "rollout.sampling.top_p=0.0 out of range: it must be > 0 and <= 1"),
        ("eval.sampling.temperature=0", "eval.sampling.temperature=0.0 out of range"),
        ("cluster.num_cpus=0", "cluster.num_cpus=0 out of range"),
        ("reward.weights=[1.0,inf]", "reward.weights"),
    ],
)
def test_out_of_range_key_is_blamed_on_itself(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config([override])
    assert message in str(raised.value)


def test_out_of_range_key_fails_before_the_run_directory_is_written(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", f"trainer.output_dir={out}", "learner.lr=-0.001", "cluster.mode=local"]) == 2
    assert "learner.lr=-0.001 out of range" in capsys.readouterr().err
    assert not out.exists()
