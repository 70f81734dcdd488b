"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny model (tokenizer + random Qwen2 LM), built once per session outside ~/.cache."""
    from rlft.tiny_model import build_tiny_model  # imported here: it pulls in torch and transformers

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "tiny")
