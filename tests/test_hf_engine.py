"""The hf engine's static-cache decoder (CPU, float32): logprobs, greedy tokens, EOS, sampling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rlft.config import HFEngineConfig, ModelConfig, SamplingConfig
from rlft.rollout.hf_engine import HFEngine, _top_k_top_p, sample_next

PROMPTS = [[5, 17, 42, 9, 33, 8, 71], [12, 3], [100, 200, 300, 11]]


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> dict[str, HFEngine]:
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    return {d: HFEngine(cfg, hf_cfg=HFEngineConfig(decode=d)) for d in ("auto", "generate")}


@pytest.fixture(scope="module")
def llama_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HFEngine:
    """A random Llama with the tiny model's tokenizer: Llama's forward takes one mask, not a
    mapping of masks per attention type as Qwen2's does (SmolLM2 is a Llama)."""
    out = tmp_path_factory.mktemp("llama")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    config = LlamaConfig(
        vocab_size=AutoConfig.from_pretrained(tiny_model_dir).vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return HFEngine(ModelConfig(path=str(out), dtype="float32"), hf_cfg=HFEngineConfig(decode="auto"))


def _learner_logprobs(model: torch.nn.Module, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Log-probabilities of ``tokens`` after ``prompt``, from one unpadded forward (the learner's view)."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.double() / 0.7, -1).gather(-1, ids[0, len(prompt) :, None])[:, 0].float()


@pytest.mark.parametrize("decode", ["auto", "generate", "llama"])
def test_logprobs_match_a_full_forward(
    engines: dict[str, HFEngine], decode: str, request: pytest.FixtureRequest
) -> None:
    engine = request.getfixturevalue("llama_engine") if decode == "llama" else engines[decode]
    assert engine.decode == ("generate" if decode == "generate" else "static")
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=12)
    groups = engine.generate(PROMPTS, 3, sampling, seed=1)
    assert [len(g) for g in groups] == [3, 3, 3]
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            expected = _learner_logprobs(engine.model, prompt, c.token_ids)
            assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4), (c.logprobs, expected)
    # Different rows of a group are sampled independently; the seed fixes the whole rollout.
    assert len({tuple(c.token_ids) for c in groups[0]}) > 1
    again = engine.generate(PROMPTS, 3, sampling, seed=1)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in groups]


def test_top_k_1_is_greedy_decoding(engines: dict[str, HFEngine]) -> None:
    """top_k=1 must give exactly transformers' greedy ``generate`` of each prompt without padding."""
    engine = engines["auto"]
    groups = engine.generate(PROMPTS, 2, SamplingConfig(top_k=1, max_new_tokens=10), seed=0)
    eos = engine.tokenizer.eos_token_id
    for prompt, group in zip(PROMPTS, groups, strict=True):
        ids = torch.tensor([prompt])
        ref = engine.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=10,
            eos_token_id=eos,
            pad_token_id=engine.tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
        ref = ref[: ref.index(eos) + 1] if eos in ref else ref
        assert [c.token_ids for c in group] == [ref, ref]


def test_rows_stop_at_eos(engines: dict[str, HFEngine]) -> None:
    """Rows that sample EOS end there ("stop"); the others run to max_new_tokens ("length")."""
    engine = engines["auto"]
    eos = engine.tokenizer.eos_token_id

    def eos_on_even_rows(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[0::2, :, eos] += 1e4
        out[1::2, :, eos] -= 1e4
        return out

    handle = engine.model.lm_head.register_forward_hook(eos_on_even_rows)
    try:
        groups = engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=20), seed=0)
    finally:
        handle.remove()
    for group in groups:
        first, second = group
        assert first.token_ids == [eos] and first.finish_reason == "stop"
        assert first.logprobs == pytest.approx([0.0], abs=1e-4)
        assert (
            len(second.token_ids) == 20 and second.finish_reason == "length" and eos not in second.token_ids
        )


def test_static_decode_refuses_models_it_cannot_run(tiny_model_dir: Path) -> None:
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    engine = HFEngine(cfg, hf_cfg=HFEngineConfig(decode="static"))
    engine.model.config.layer_types = ["sliding_attention"] * engine.model.config.num_hidden_layers
    from rlft.rollout.hf_engine import _resolve_decode

    with pytest.raises(ValueError, match=r"rollout\.hf\.decode=generate"):
        _resolve_decode("static", engine.model)
    assert _resolve_decode("auto", engine.model) == "generate"


def test_sample_next_draws_from_the_tempered_distribution() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    sampling = SamplingConfig(temperature=0.5)
    draws = 40_000
    tokens, logprobs = sample_next(logits.expand(draws, -1), sampling)
    probs = torch.softmax(logits[0] / 0.5, -1)
    freq = torch.bincount(tokens, minlength=5).float() / draws
    # 5 standard errors of a binomial proportion.
    assert torch.all((freq - probs).abs() <= 5 * (probs * (1 - probs) / draws).sqrt() + 1e-9)
    assert torch.allclose(logprobs, probs.log()[tokens])


def test_top_k_top_p_keep_the_right_tokens() -> None:
    # probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (in a shuffled order)
    p = torch.tensor([0.0625, 0.25, 0.5, 0.0625, 0.125])
    logits = p.log()[None]
    kept = lambda t: torch.isfinite(t[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(_top_k_top_p(logits, 2, 1.0)) == [1, 2]
    assert kept(_top_k_top_p(logits, 0, 0.7)) == [1, 2]  # 0.5 < 0.7 <= 0.75
    assert kept(_top_k_top_p(logits, 0, 0.8)) == [1, 2, 4]
    assert kept(_top_k_top_p(logits, 0, 0.1)) == [2]  # the top token always stays
    # top-p applies to the top-k tokens' renormalised probabilities (2/3, 1/3)
    assert kept(_top_k_top_p(logits, 2, 0.6)) == [2]
    assert kept(_top_k_top_p(logits, 2, 0.7)) == [1, 2]


def test_logprobs_are_those_of_the_truncated_distribution() -> None:
    """The reported logprob is that of the distribution sampled from (vLLM's processed logprobs):
    tempered, then renormalised over the top-k / top-p tokens. Worked by hand on 5 tokens."""
    p = torch.tensor([0.0625, 0.25, 0.5, 0.0625, 0.125])
    logits = p.log()[None].expand(4000, -1)
    # top_p=0.7 keeps 0.5 and 0.25: q = 2/3, 1/3.
    tokens, logprobs = sample_next(logits, SamplingConfig(top_p=0.7))
    expected = {2: math.log(2 / 3), 1: math.log(1 / 3)}
    assert set(tokens.tolist()) == {1, 2}
    assert math.isclose((tokens == 2).float().mean().item(), 2 / 3, abs_tol=0.04)
    assert torch.allclose(logprobs, torch.tensor([expected[t] for t in tokens.tolist()]))
    # temperature 2 makes the weights sqrt(p); top_k=2 keeps sqrt(1/2) and sqrt(1/4) = 1/2:
    # q = sqrt(2) / (sqrt(2) + 1) = 2 - sqrt(2) and 1 / (sqrt(2) + 1) = sqrt(2) - 1.
    tokens, logprobs = sample_next(logits, SamplingConfig(temperature=2.0, top_k=2))
    expected = {2: math.log(2 - math.sqrt(2)), 1: math.log(math.sqrt(2) - 1)}
    assert set(tokens.tolist()) == {1, 2}
    assert torch.allclose(logprobs, torch.tensor([expected[t] for t in tokens.tolist()]))
    assert math.isclose((tokens == 2).float().mean().item(), 2 - math.sqrt(2), abs_tol=0.04)


def _truncated_logprob(
    logits: torch.Tensor, token: int, temperature: float, top_k: int, top_p: float
) -> float:
    """log q(token): softmax(logits / T) kept to the top-k tokens, then to the most likely ones
    until their renormalised mass reaches top_p, renormalised (a plain loop, as a reference)."""
    probs = torch.softmax(logits.double() / temperature, -1)
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i].item())[:top_k]
    mass = sum(probs[i].item() for i in ranked)
    kept, total = [], 0.0
    for i in ranked:
        kept.append(i)
        total += probs[i].item() / mass
        if total >= top_p:
            break
    assert token in kept, "a token outside the kept set was sampled"
    return math.log(probs[token].item() / sum(probs[i].item() for i in kept))


@pytest.mark.parametrize("decode", ["auto", "generate"])
def test_truncated_sampling_logprobs_match_a_reference(engines: dict[str, HFEngine], decode: str) -> None:
    engine = engines[decode]
    sampling = SamplingConfig(temperature=0.7, top_k=5, top_p=0.8, max_new_tokens=8)
    groups = engine.generate(PROMPTS, 2, sampling, seed=3)
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for c in group:
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
            expected = [
                _truncated_logprob(row, t, 0.7, 5, 0.8) for row, t in zip(logits, c.token_ids, strict=True)
            ]
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(expected).float(), atol=1e-4)
