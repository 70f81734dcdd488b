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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.path=/no/such/dir", "model.path='/no/such/dir': the directory does not exist"),
        (
            "model.tokenizer_path=./no/such/tok",
            "model.tokenizer_path='./no/such/tok': the directory does not exist",
        ),
        (
            "model.path=someorg/somemodel",
            "it is taken as a Hugging Face hub id, but the hub cannot be reached",
        ),
    ],
)
def test_missing_model_is_named(
    override: str, message: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlft import modeling

    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout_s=5.0: False)  # no waiting on DNS
    out = tmp_path / "run"
    assert main(["train", override, f"trainer.output_dir={out}", "cluster.mode=local"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Repo id must be" not in err
    assert not out.exists()


def test_hub_id_while_offline_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlft.modeling import check_model_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"switched off \(HF_HUB_OFFLINE is set\).*huggingface-cli download"):
        check_model_source("someorg/somemodel", "reward.model.path")


def test_prompts_longer_than_the_model_context_are_refused_naming_both_numbers(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    """The tiny model has 512 positions: max_prompt_tokens=1207 cannot fit (it trained before, with
    only a transformers warning)."""
    out = tmp_path / "run"
    args = ["train", f"model.path={tiny_model_dir}", f"trainer.output_dir={out}", "cluster.mode=local"]
    assert main([*args, "model.max_prompt_tokens=1207"]) == 2
    assert (
        "model.max_prompt_tokens=1207 + rollout.sampling.max_new_tokens=32 = 1239 tokens is more than the "
        f"512 positions of model.path={str(tiny_model_dir)!r} (max_position_embeddings in its config): "
        "lower model.max_prompt_tokens to at most 480"
    ) in capsys.readouterr().err
    assert not out.exists()


def test_context_check_covers_evaluation() -> None:
    from rlft.validation import check_context

    cfg = load_config(
        ["model.max_prompt_tokens=400", "eval.every_steps=5", "eval.sampling.max_new_tokens=600"]
    )
    with pytest.raises(ValueError, match=r"lower eval\.sampling\.max_new_tokens below 512"):
        check_context(cfg, 512)
    check_context(cfg, None)  # a config without a context length: nothing to check
