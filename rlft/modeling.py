"""Loading models and tokenizers: always through the Auto classes, from a hub id or a directory."""

from __future__ import annotations

from typing import Any

import torch

from rlft.config import ModelConfig
from rlft.tiny_model import resolve_model_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _quiet_transformers() -> None:
    """No per-load progress bars: with several actors they flood the driver's console."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer of ``model.tokenizer_path`` (default ``model.path``); it must have a pad token."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.tokenizer_path or cfg.path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The causal LM at ``model.path`` in ``model.dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r} is not one of {sorted(DTYPES)}")
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg.path), dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )
    return model.to(device)


def default_device() -> torch.device:
    """The first GPU Ray (or the user) made visible to this process, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def apply_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """``model`` with peft LoRA adapters (``model.lora``), or unchanged when ``model.lora.rank`` is 0.
    Adapters start as a no-op (B = 0), so learner and rollout engine begin from the same function."""
    if cfg.lora.rank <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def load_value_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A critic: the causal LM's backbone at ``model.critic_path`` (default ``model.path``) with a
    fresh scalar head per token (``AutoModelForTokenClassification``, one label)."""
    from transformers import AutoModelForTokenClassification

    _quiet_transformers()
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model_path(cfg.critic_path or cfg.path),
        num_labels=1,
        dtype=DTYPES[cfg.dtype],
        trust_remote_code=cfg.trust_remote_code,
    )
    return model.to(device)


def token_values(
    critic: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[N, L] critic values aligned with ``input_ids`` like :func:`token_logprobs`: column t holds
    V of the state before token t is generated (read at position t - 1); column 0 is 0."""
    scores = critic(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()
    return torch.nn.functional.pad(scores[:, :-1], (1, 0))


def token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability and entropy of each position's next-token distribution, aligned with ``input_ids``.

    ``logits`` [N, L, V] from a causal LM over ``input_ids`` [N, L]. Returns (logprobs, entropy),
    both [N, L]: column t holds log p(input_ids[:, t] | input_ids[:, :t]) at the sampling
    ``temperature`` and the entropy of that distribution (differentiable only with
    ``entropy_grad``); column 0 has no context and is 0. One sequence at a time, so only one
    [L, V] float32 copy of the logits exists at once.
    """
    logprobs = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    entropy = torch.zeros_like(logprobs)
    # unbind, not logits[i]: indexing row by row would make the backward write one full-size
    # zero gradient per row (quadratic in the micro-batch); unbind's backward stacks them once.
    for i, row in enumerate(logits.unbind(0)):
        row = row[:-1].float()
        logp = torch.log_softmax(row if temperature == 1.0 else row / temperature, dim=-1)
        logprobs[i, 1:] = logp.gather(-1, input_ids[i, 1:, None]).squeeze(-1)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy[i, 1:] = -(logp.exp() * logp).sum(-1)
    return logprobs, entropy
