"""Build the offline tiny test model (byte-level BPE tokenizer + random Qwen2 LM) into a directory.

    python scripts/make_tiny_model.py --out /tmp/tiny

Load it like any checkpoint with ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained(DIR)``.
An existing complete directory is left untouched.
"""

from __future__ import annotations

import argparse

from rlft.tiny_model import build_tiny_model


def main() -> None:
    """Parses the command line and builds the tiny model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=512, help="upper bound on the vocabulary size")
    parser.add_argument("--hidden-size", type=int, default=64, help="a multiple of 32 (the head dim)")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    out = build_tiny_model(
        args.out,
        seed=args.seed,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
    )
    print(out)


if __name__ == "__main__":
    main()
