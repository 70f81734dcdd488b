"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny model (tokenizer + random Qwen2 LM), built once per session outside ~/.cache."""
    from rlft.tiny_model import build_tiny_model  # imported here: it pulls in torch and transformers

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "tiny")


@pytest.fixture(scope="session")
def quickstart_args(tiny_model_dir: Path) -> Callable[..., list[str]]:
    """``rlft`` arguments for the quickstart recipe on the tiny model into ``out``, wandb off,
    followed by ``overrides``."""

    def args(out: Path, *overrides: str) -> list[str]:
        return [
            "train",
            "recipe=quickstart",
            f"model.path={tiny_model_dir}",
            f"trainer.output_dir={out}",
            "tracking.wandb.enabled=false",
            *overrides,
        ]

    return args
