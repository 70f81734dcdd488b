"""Competition math (MATH, Hendrycks et al. 2021, arXiv 2103.03874, and sets in its style) as
prompt rows for rlft: ``prompt``, ``answer`` (+ ``level``, ``type`` where the source has them).

    python scripts/prepare_math.py --src DigitalLearningGmbH/MATH-lighteval --split train \
        --levels 3,4,5 --out data/math/train.jsonl
    python scripts/prepare_math.py --src HuggingFaceH4/MATH-500 --split test --out data/math/test.jsonl
    python scripts/prepare_math.py --src BytedTsinghua-SIA/DAPO-Math-17k --out data/dapo_math/train.jsonl

``--src`` is a hub dataset (downloaded by ``datasets``) or a local jsonl/parquet/csv file in one of
these layouts (detected from the columns):

- ``problem`` + ``solution`` (MATH): the answer is the solution's last ``\\boxed{...}``;
- ``problem`` + ``answer`` (MATH-500 and most derived sets): taken as it is;
- verl style (DAPO-Math-17k): ``prompt`` = chat messages (the user message is the prompt) and
  ``reward_model`` = ``{"ground_truth": ...}``.

``--levels 3,4,5`` keeps MATH levels 3-5 (Dr. GRPO's training set); answers are checked by
``rewards/math_answer.py:math_answer``.
"""

from __future__ import annotations

import argparse
from typing import Any

from rlft.data.prompts import read_rows, write_rows
from rlft.rewards.parsing import last_boxed


def convert(row: dict[str, Any]) -> dict[str, Any]:
    """One row in rlft's layout; raises naming the row's columns if no layout fits."""
    if "problem" in row and "answer" in row:
        out = {"prompt": row["problem"], "answer": str(row["answer"])}
    elif "problem" in row and "solution" in row:
        answer = last_boxed(str(row["solution"]))
        if answer is None:
            raise ValueError(f"MATH row whose solution has no \\boxed{{}} answer: {row['problem'][:80]!r}")
        out = {"prompt": row["problem"], "answer": answer}
    elif isinstance(row.get("prompt"), list) and isinstance(row.get("reward_model"), dict):
        user = [m["content"] for m in row["prompt"] if m["role"] == "user"]
        out = {"prompt": user[-1], "answer": str(row["reward_model"]["ground_truth"])}
    else:
        raise ValueError(
            f"unknown math layout with columns {sorted(row)}: expected problem+solution, "
            "problem+answer, or verl-style prompt (messages) + reward_model.ground_truth"
        )
    for key in ("level", "type", "subject"):
        if key in row:
            out[key] = row[key]
    return out


def level(row: dict[str, Any]) -> int | None:
    """MATH's difficulty as a number (``Level 3`` or ``3``), or None."""
    value = str(row.get("level", "")).removeprefix("Level ").strip()
    return int(value) if value.isdigit() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="hub dataset name or local file")
    parser.add_argument("--subset", default=None, help="hub dataset configuration")
    parser.add_argument("--split", default="train", help="hub split (ignored for a local file)")
    parser.add_argument("--levels", default="", help="comma-separated MATH levels to keep, e.g. 3,4,5")
    parser.add_argument("--out", required=True, help="output .jsonl or .parquet")
    args = parser.parse_args(argv)
    rows = [convert(r) for r in read_rows(args.src, args.split, args.subset)]
    if args.levels:
        keep = {int(x) for x in args.levels.split(",")}
        rows = [r for r in rows if level(r) in keep]
    print(f"wrote {len(rows)} rows to {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
