"""GSM8K (Cobbe et al. 2021, arXiv 2110.14168) as prompt rows for rlft: ``prompt``, ``answer``.

    python scripts/prepare_gsm8k.py --src openai/gsm8k --split train --out data/gsm8k/train.jsonl
    python scripts/prepare_gsm8k.py --src openai/gsm8k --split test --out data/gsm8k/test.jsonl

``--src`` is a hub dataset (downloaded by ``datasets``) or a local jsonl/parquet/csv file in the
hub layout: ``question`` and ``answer``, the worked solution ending in ``#### <number>``. Each row
becomes ``prompt`` (the question), ``answer`` (the final number, thousands separators removed) and
``solution`` (the worked solution), ready for ``rewards/gsm8k.py:gsm8k``.
"""

from __future__ import annotations

import argparse
from typing import Any

from rlft.data.prompts import read_rows, write_rows


def convert(row: dict[str, Any]) -> dict[str, str]:
    """One GSM8K row in rlft's layout; raises if the solution has no ``####`` final answer."""
    solution = str(row["answer"])
    if "####" not in solution:
        raise ValueError(f"GSM8K row without a '#### <answer>' line: {solution[-80:]!r}")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return {"prompt": str(row["question"]).strip(), "answer": final, "solution": solution}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="openai/gsm8k", help="hub dataset name or local file")
    parser.add_argument("--subset", default="main", help="hub dataset configuration")
    parser.add_argument("--split", default="train", help="hub split (ignored for a local file)")
    parser.add_argument("--out", required=True, help="output .jsonl or .parquet")
    args = parser.parse_args(argv)
    rows = [convert(r) for r in read_rows(args.src, args.split, args.subset)]
    print(f"wrote {len(rows)} rows to {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
