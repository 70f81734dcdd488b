"""Random-weight models for the benchmarks (no hub here): Qwen2 shapes saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch

QWEN2_05B = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
"""Qwen2.5-0.5B's shape (its config.json), random weights."""


def save_random_qwen2(shape: dict, path: Path, dtype: str) -> Path:
    """A Qwen2 causal LM of ``shape`` with seeded random weights at ``path`` (built once, on the
    GPU when there is one)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=getattr(torch, dtype))
        model.save_pretrained(path)
        del model
    return path
