"""Preference pairs (UltraFeedback-binarized or Anthropic HH-RLHF layouts) as rlft rows:
``prompt``, ``chosen``, ``rejected``, as chat messages or as plain text.

    python scripts/prepare_preference.py --src HuggingFaceH4/ultrafeedback_binarized \
        --split train_prefs --out data/ultrafeedback/train.jsonl
    python scripts/prepare_preference.py --src Anthropic/hh-rlhf --format text --out data/hh/train.jsonl

``--src`` is a hub dataset (downloaded by ``datasets``) or a local jsonl/parquet/csv file in one of
these layouts (``--layout auto`` detects it from the first row):

- ``ultrafeedback``: ``prompt`` (text), ``chosen`` and ``rejected`` (chat conversations ending in
  the assistant's answer), as in HuggingFaceH4/ultrafeedback_binarized and
  argilla/ultrafeedback-binarized-preferences-cleaned;
- ``hh``: ``chosen`` and ``rejected`` transcripts, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, which
  share every turn but the last (Anthropic/hh-rlhf).

``--format messages`` (default) writes each response as a one-message list
(``[{"role": "assistant", ...}]``) and the prompt as the conversation before it (a message list);
rlft renders them with the model's chat template. ``--format text`` writes the prompt as text (HH:
the raw transcript up to the final ``"\\n\\nAssistant:"``; UltraFeedback: the user's message) and the
responses as text, for ``data.apply_chat_template=false`` or raw formatting. Pairs whose two
conversations differ before the final answer, or whose answers are equal, are skipped and counted.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from rlft.data.prompts import read_rows, write_rows

Message = dict[str, str]
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_messages(transcript: str) -> list[Message]:
    """An HH-RLHF transcript as chat messages (``Human`` -> user, ``Assistant`` -> assistant)."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise ValueError(f"not an HH-RLHF transcript: {transcript[:80]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": text} for who, text in zip(parts[1::2], parts[2::2], strict=True)]


def detect_layout(row: dict[str, Any]) -> str:
    if isinstance(row.get("chosen"), list):
        return "ultrafeedback"
    if isinstance(row.get("chosen"), str) and "\n\nHuman: " in row["chosen"]:
        return "hh"
    raise ValueError(
        f"unknown preference layout with columns {sorted(row)}: expected UltraFeedback "
        "(chosen/rejected chat messages) or HH-RLHF (chosen/rejected transcripts); pass --layout"
    )


def convert(row: dict[str, Any], layout: str, fmt: str) -> dict[str, Any] | None:
    """One pair in rlft's layout, or None if the two conversations do not form a pair."""
    if layout == "hh":
        chosen, rejected = hh_messages(row["chosen"]), hh_messages(row["rejected"])
    else:
        chosen, rejected = list(row["chosen"]), list(row["rejected"])
    if (
        chosen[:-1] != rejected[:-1]
        or chosen[-1]["role"] != "assistant"
        or rejected[-1]["role"] != "assistant"
    ):
        return None
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return None
    context = chosen[:-1]
    if fmt == "messages":
        return {"prompt": context, "chosen": [chosen[-1]], "rejected": [rejected[-1]]}
    if layout == "hh":
        prompt = row["chosen"][: len(row["chosen"]) - len(chosen[-1]["content"])].removesuffix(" ")
        return {
            "prompt": prompt,
            "chosen": " " + chosen[-1]["content"],
            "rejected": " " + rejected[-1]["content"],
        }
    if len(context) != 1:
        return None  # a multi-turn conversation has no single text prompt
    return {
        "prompt": context[0]["content"],
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="hub dataset name or local file")
    parser.add_argument("--subset", default=None, help="hub dataset configuration")
    parser.add_argument("--split", default="train", help="hub split (ignored for a local file)")
    parser.add_argument("--layout", choices=("auto", "ultrafeedback", "hh"), default="auto")
    parser.add_argument("--format", choices=("messages", "text"), default="messages")
    parser.add_argument("--out", required=True, help="output .jsonl or .parquet")
    args = parser.parse_args(argv)
    rows = read_rows(args.src, args.split, args.subset)
    layout = detect_layout(rows[0]) if args.layout == "auto" else args.layout
    pairs = [convert(r, layout, args.format) for r in rows]
    kept = [p for p in pairs if p is not None]
    out = write_rows(kept, args.out)
    print(f"{layout} layout: wrote {len(kept)} pairs to {out}; skipped {len(pairs) - len(kept)}")


if __name__ == "__main__":
    main()
