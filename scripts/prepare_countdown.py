"""Countdown number puzzles (as in TinyZero, github.com/Jiayi-Pan/TinyZero) as rlft rows:
``target`` and ``nums`` (+ ``solution``, one expression that reaches the target).

    python scripts/prepare_countdown.py --num 327680 --out data/countdown/train.jsonl \
        --test-num 1024 --test-out data/countdown/test.jsonl
    python scripts/prepare_countdown.py --src Jiayi-Pan/Countdown-Tasks-3to4 --out data/countdown/train.jsonl

Generated puzzles (the default, seeded by ``--seed``) are solvable by construction: 3-4 numbers
from 1..99 are combined in a random order with random ``+ - * /`` that keep every intermediate a
positive integer, and the result, when it lies in 1..``--max-target``, is the target. Puzzles are
unique, and the ``--test-out`` ones are disjoint from the training ones. With ``--src`` (a hub
dataset or local file in TinyZero's layout, ``target`` + ``nums``) the rows are copied instead.
The prompt is built at training time from these columns by the recipe's ``data.prompt_template``;
``rewards/countdown.py:countdown`` scores the answers.
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from rlft.data.prompts import read_rows, write_rows


def puzzle(
    rng: random.Random, min_numbers: int, max_numbers: int, max_number: int, max_target: int
) -> dict[str, Any]:
    """One solvable puzzle: ``{"target", "nums", "solution"}``."""
    while True:
        nums = [rng.randint(1, max_number) for _ in range(rng.randint(min_numbers, max_numbers))]
        order = rng.sample(nums, len(nums))
        value, expression = order[0], str(order[0])
        for n in order[1:]:
            options = [("+", value + n), ("*", value * n)]
            if value > n:
                options.append(("-", value - n))
            if value % n == 0:
                options.append(("/", value // n))
            op, value = rng.choice(options)
            expression = f"({expression} {op} {n})"
        if 1 <= value <= max_target:
            return {
                "target": value,
                "nums": nums,
                "solution": expression[1:-1] if len(order) > 1 else expression,
            }


def generate(
    num: int, seed: int, min_numbers: int, max_numbers: int, max_number: int, max_target: int
) -> list[dict]:
    """``num`` distinct puzzles (distinct by target and numbers as a multiset), in a seeded order."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < num:
        row = puzzle(rng, min_numbers, max_numbers, max_number, max_target)
        key = (row["target"], tuple(sorted(row["nums"])))
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def convert(row: dict[str, Any]) -> dict[str, Any]:
    """A row of TinyZero's layout (``target``, ``nums``) in rlft's."""
    return {"target": int(row["target"]), "nums": [int(n) for n in row["nums"]]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=None, help="hub dataset or local file to copy instead of generating")
    parser.add_argument("--split", default="train", help="hub split of --src")
    parser.add_argument("--num", type=int, default=327680, help="training puzzles to generate")
    parser.add_argument("--test-num", type=int, default=0, help="held-out puzzles (for --test-out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-numbers", type=int, default=3)
    parser.add_argument("--max-numbers", type=int, default=4)
    parser.add_argument("--max-number", type=int, default=99)
    parser.add_argument("--max-target", type=int, default=100)
    parser.add_argument("--out", required=True, help="output .jsonl or .parquet")
    parser.add_argument("--test-out", default=None, help="output for the --test-num held-out puzzles")
    args = parser.parse_args(argv)
    if args.src is not None:
        rows = [convert(r) for r in read_rows(args.src, args.split)]
        print(f"wrote {len(rows)} rows to {write_rows(rows, args.out)}")
        return
    if args.test_num and args.test_out is None:
        parser.error("--test-num needs --test-out")
    rows = generate(
        args.num + args.test_num,
        args.seed,
        args.min_numbers,
        args.max_numbers,
        args.max_number,
        args.max_target,
    )
    print(f"wrote {args.num} rows to {write_rows(rows[: args.num], args.out)}")
    if args.test_num:
        print(f"wrote {args.test_num} rows to {write_rows(rows[args.num :], args.test_out)}")


if __name__ == "__main__":
    main()
