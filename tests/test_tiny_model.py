"""The offline tiny model loads through the Auto classes and behaves like a small chat LM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from rlft.tiny_model import BUILDER_VERSION, build_tiny_model, resolve_model_path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def _saved_files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir())}


def test_config_matches_tokenizer(tokenizer, model) -> None:
    config = model.config
    assert model.dtype == torch.float32
    assert config.hidden_size // config.num_attention_heads >= 32
    assert config.vocab_size == len(tokenizer) == 512
    assert config.tie_word_embeddings
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None and config.bos_token_id is None
    for cfg in (config, model.generation_config):
        assert cfg.eos_token_id == tokenizer.eos_token_id
        assert cfg.pad_token_id == tokenizer.pad_token_id


def test_chat_template(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tokenizer.eos_token_id) == 2
    reply = [*messages, {"role": "assistant", "content": "Hello!"}]
    assert tokenizer.apply_chat_template(reply, tokenize=False).endswith("assistant\nHello!<|im_end|>\n")


@pytest.mark.parametrize("text", ["3 + 4 = 7", "Repeat the digit 7.", "Write 5 5 5 5", "12345\n  héllo 🙂"])
def test_round_trip(tiny_model_dir: Path, tokenizer, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # transformers 5 rebuilds a qwen2 tokenizer's pipeline; it must agree with tokenizer.json.
    assert Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode(text).ids == ids


def test_forward_logits_shape(tokenizer, model) -> None:
    batch = tokenizer(["1 + 1 = 2", "Repeat the digit 3."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))


class _EosInFirstRow(LogitsProcessor):
    """Makes row 0 emit eos as its first new token."""

    def __init__(self, prompt_len: int, eos_token_id: int) -> None:
        self.prompt_len, self.eos_token_id = prompt_len, eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.prompt_len:
            scores[0] = -torch.inf
            scores[0, self.eos_token_id] = 0.0
        return scores


def test_generate_stops_and_pads(tokenizer, model) -> None:
    tokenizer.padding_side = "left"
    prompts = ["Repeat the digit 7.", "3 + 4 ="]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    prompt_len = batch["input_ids"].shape[1]
    force_eos = LogitsProcessorList([_EosInFirstRow(prompt_len, tokenizer.eos_token_id)])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, logits_processor=force_eos)
    new = out[:, prompt_len:]
    assert new.shape[1] > 1  # row 1 kept generating after row 0 stopped
    assert new[0, 0] == tokenizer.eos_token_id
    assert (new[0, 1:] == tokenizer.pad_token_id).all()


def test_build_twice_is_noop(tiny_model_dir: Path) -> None:
    before = _saved_files(tiny_model_dir)
    assert build_tiny_model(tiny_model_dir, seed=1) == tiny_model_dir
    assert _saved_files(tiny_model_dir) == before
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == [tiny_model_dir.name]  # no temp dirs left


def test_build_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    first = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(again).state_dict().items():
        assert torch.equal(tensor, first[name]), name


def test_build_refuses_incomplete_dir(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_resolve_model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in ("Qwen/Qwen2.5-0.5B-Instruct", "/models/tiny", "tiny2", ""):
        assert resolve_model_path(path) == path
    monkeypatch.setenv("RLFT_CACHE_DIR", str(tmp_path))
    resolved = resolve_model_path("tiny")
    assert resolved == str(tmp_path / f"tiny-v{BUILDER_VERSION}-seed0")
    assert AutoTokenizer.from_pretrained(resolved).eos_token == "<|im_end|>"
    assert resolve_model_path("tiny") == resolved
