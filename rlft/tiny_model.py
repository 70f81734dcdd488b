"""The offline tiny test model: a byte-level BPE tokenizer and a random Qwen2-style causal LM.

Tests and ``model=tiny`` runs use it instead of a hub download. It is saved like any checkpoint, so
callers load it with ``AutoTokenizer.from_pretrained(dir)`` and ``AutoModelForCausalLM.from_pretrained(dir)``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

TINY_MODEL_NAME = "tiny"
# Part of the cache directory's name: bump it whenever the builder's output changes.
BUILDER_VERSION = 1

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
HEAD_DIM = 32
MAX_POSITIONS = 512
# Qwen2's pre-tokenizer split (single digits, words with one leading non-letter). transformers 5 loads
# any model_type="qwen2" tokenizer as Qwen2Tokenizer, which rebuilds exactly this pipeline from the
# vocab and merges; training with it keeps AutoTokenizer's ids equal to tokenizer.json's.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_SAVED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_WORDS = (
    "the a an number digit answer question please write repeat count add sum is what and then "
    "twice again short list of word words sentence about cat dog sun tree good yes no hello thanks "
    "you I can help with this that result first last next step think carefully correct wrong "
    "plus minus times equals total small big red blue green house river book friend morning "
    "evening story poem explain simple example because after before always never today"
)


def _corpus(seed: int, num_lines: int = 4000) -> Iterator[str]:
    """Yields short deterministic English-ish lines: instructions, digits, arithmetic and chat turns."""
    rng = random.Random(seed)
    vocabulary = _WORDS.split()
    for _ in range(num_lines):
        a, b, d = rng.randint(0, 99), rng.randint(0, 99), rng.randint(0, 9)
        words = " ".join(rng.choices(vocabulary, k=rng.randint(3, 8)))
        yield rng.choice(
            [
                f"Repeat the digit {d}.",
                f"{a} + {b} = {a + b}",
                f"What is {a} + {b}? The answer is {a + b}.",
                f"Write {' '.join([str(d)] * rng.randint(2, 8))}",
                f"Count from {d} to {d + 5}: {' '.join(str(i) for i in range(d, d + 6))}",
                f"user\nPlease {words}.\nassistant\nSure! {words.capitalize()}.",
                f"system\nYou are a helpful assistant.\nuser\nHello, can you add {a} and {b}?",
            ]
        )


def _train_tokenizer(seed: int, vocab_size: int) -> PreTrainedTokenizerFast:
    """Trains a Qwen2-style byte-level BPE tokenizer with ChatML special tokens and chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def _random_model(
    tokenizer: PreTrainedTokenizerFast, seed: int, hidden_size: int, num_layers: int
) -> Qwen2ForCausalLM:
    """Builds a random float32 Qwen2 LM matching ``tokenizer``, leaving torch's global RNG untouched."""
    if hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size must be a multiple of {HEAD_DIM}, got {hidden_size}")
    num_heads = hidden_size // HEAD_DIM
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=torch.float32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def _is_complete(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in _SAVED_FILES)


def build_tiny_model(
    out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512, hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Builds the tiny tokenizer + model into ``out_dir`` and returns it; deterministic in ``seed``.

    The model is written to a temporary directory beside ``out_dir`` and renamed into place, so
    ``out_dir`` is either absent (or empty) or complete. A complete ``out_dir`` is returned untouched,
    whatever arguments built it; when two processes race, the loser discards its copy.
    ``vocab_size`` is an upper bound: the model's vocabulary is ``len(tokenizer)``.
    """
    out_dir = Path(out_dir)
    if _is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tokenizer = _train_tokenizer(seed, vocab_size)
        _random_model(tokenizer, seed, hidden_size, num_layers).save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        tmp_dir.chmod(0o755)  # mkdtemp makes it private; the model dir should not be
        try:
            tmp_dir.rename(out_dir)  # atomic; fails when out_dir is not empty
        except OSError as err:
            if not _is_complete(out_dir):
                raise FileExistsError(f"{out_dir} exists but does not hold a complete tiny model") from err
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def resolve_model_path(path: str) -> str:
    """Returns ``path`` unchanged, unless it is ``"tiny"``: then the cached tiny model's directory.

    The tiny model is built on first use under ``$RLFT_CACHE_DIR`` (default ``~/.cache/rlft``).
    """
    if path != TINY_MODEL_NAME:
        return path
    cache_dir = Path(os.environ.get("RLFT_CACHE_DIR") or Path.home() / ".cache" / "rlft")
    return str(build_tiny_model(cache_dir / f"{TINY_MODEL_NAME}-v{BUILDER_VERSION}-seed0"))
