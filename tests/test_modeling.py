"""Chunked log-probabilities from the final hidden states (rlft.modeling) against a plain
log-softmax over the full logits, and gradient checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlft.config import LoraConfig, ModelConfig
from rlft.modeling import (
    _LinearLogprobs,
    apply_lora,
    causal_lm_logprobs,
    enable_gradient_checkpointing,
    lm_head_logprobs,
    load_model,
)


def reference_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] log p(input_ids[:, t] | ...) and entropy from full logits [N, L, V], column 0 = 0:
    written out independently of rlft.modeling."""
    logp = torch.log_softmax(logits[:, :-1].double() / temperature, dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    pad = torch.nn.functional.pad
    return pad(picked, (1, 0)), pad(entropy, (1, 0))


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids [3, 9], attention mask and a score mask (the "completion" tokens)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 400, (3, 9), generator=g)
    lengths = torch.tensor([9, 6, 4])
    attention = (torch.arange(9)[None] < lengths[:, None]).long()
    score = attention.clone()
    score[:, :2] = 0  # a 2-token prompt
    return ids, attention, score


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_chunked_logprobs_pass_gradcheck_in_float64(compiled: bool) -> None:
    """Analytical gradients of logprob and entropy (both outputs, temperature 0.7, chunks of 3
    over 7 rows: a short last chunk) equal finite differences, eager and through torch.compile."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(20, 4, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 20, (7,), generator=g)
    assert torch.autograd.gradcheck(
        lambda h, w: _LinearLogprobs.apply(h, w, targets, 0.7, 3, True, compiled), (hidden, weight)
    )


@pytest.mark.parametrize("chunk", [1, 5, 4096])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_full_logits(
    tiny_model_dir: Path, batch: tuple[torch.Tensor, ...], chunk: int, temperature: float
) -> None:
    """Same logprobs, entropies and parameter gradients (float64 model) as a log-softmax over
    the model's full logits; unscored positions are 0."""
    ids, attention, score = batch
    model = load_model(ModelConfig(path=str(tiny_model_dir))).double().eval()
    ref_lp, ref_ent = reference_logprobs(
        model(input_ids=ids, attention_mask=attention).logits, ids, temperature
    )
    ref_loss = ((ref_lp * 1.3 + ref_ent * 0.2) * score).sum()
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))

    lp, ent = causal_lm_logprobs(
        model, ids, score, attention_mask=attention, temperature=temperature, chunk_tokens=chunk, entropy=True
    )
    assert torch.allclose(lp, ref_lp * score, atol=1e-12) and torch.allclose(ent, ref_ent * score, atol=1e-12)
    assert (lp[score == 0] == 0).all()
    grads = torch.autograd.grad((lp * 1.3 + ent * 0.2).sum(), list(model.parameters()))
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-12), name


def test_chunked_logprobs_through_a_lora_lm_head(
    tiny_model_dir: Path, batch: tuple[torch.Tensor, ...]
) -> None:
    """A peft LoRA layer on lm_head takes the checkpointed-chunk path: same values and adapter
    gradients as the full logits."""
    ids, attention, score = batch
    cfg = ModelConfig(path=str(tiny_model_dir), lora=LoraConfig(rank=4, target_modules=["q_proj", "lm_head"]))
    model = apply_lora(load_model(cfg), cfg).double().eval()
    for name, p in model.named_parameters():  # B = 0 at start would make the adapter gradient trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    ref_lp, _ = reference_logprobs(model(input_ids=ids, attention_mask=attention).logits, ids, 1.0)
    ref_grads = torch.autograd.grad((ref_lp * score).sum(), params)
    lp, _ = causal_lm_logprobs(model, ids, score, attention_mask=attention, chunk_tokens=3)
    assert torch.allclose(lp, ref_lp * score, atol=1e-12)
    for g, r in zip(torch.autograd.grad(lp.sum(), params), ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-12)


def test_fused_logprobs_under_bf16_autocast_match_autocast_logits() -> None:
    """Under bfloat16 autocast the chunked head multiplies in bf16 like an autocast nn.Linear
    would (same values to float rounding), and returns float32 gradients for float32 weights."""
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(16, 64, bias=False)
    hidden = torch.randn(10, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 64, (10,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = lm_head_logprobs(hidden, head, targets, chunk_tokens=3)
        logits = head(hidden)
    assert logits.dtype == torch.bfloat16
    ref = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(lp, ref, atol=1e-5)
    exact = torch.log_softmax(hidden @ head.weight.t(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert not torch.allclose(lp, exact, atol=1e-5)  # bf16 rounding is visible: autocast was on
    lp.sum().backward()
    assert head.weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


def test_gradient_checkpointing_recomputes_layers_and_keeps_gradients(
    tiny_model_dir: Path, batch: tuple[torch.Tensor, ...]
) -> None:
    """In eval mode (as the learner runs), checkpointing runs each decoder layer twice per
    forward/backward and gives the same gradients."""
    ids, attention, score = batch

    def run(checkpointing: bool) -> tuple[int, list[torch.Tensor]]:
        model = load_model(ModelConfig(path=str(tiny_model_dir))).double().eval()
        if checkpointing:
            enable_gradient_checkpointing(model)
        calls = []
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        lp, _ = causal_lm_logprobs(model, ids, score, attention_mask=attention, chunk_tokens=7)
        lp.sum().backward()
        return len(calls), [p.grad for p in model.parameters()]

    plain_calls, plain = run(False)
    ckpt_calls, ckpt = run(True)
    assert (plain_calls, ckpt_calls) == (1, 2)
    for a, b in zip(plain, ckpt, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
