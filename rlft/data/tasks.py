"""Built-in synthetic tasks: prompts generated on the fly, with a ground-truth column.

They exist so that a run can start and visibly learn with no dataset download and no GPU: a tiny
random model raises their reward within a couple of minutes on a CPU. Select one with
``data.path=builtin:<name>``; each yields rows ``{"prompt": ..., <ground-truth columns>}`` forever.
A task is called with its random generator and a split, ``train`` or ``eval``; a task whose
problems can be held out (``arithmetic``) draws the two splits from disjoint problem sets.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator

Row = dict[str, str]


def repeat_digit(rng: random.Random, split: str = "train") -> Iterator[Row]:
    """``Repeat this digit: 7`` -> answer ``7`` (ten prompts, the same in both splits). Scored by
    ``rewards/synthetic.py:repeat_char``: the fraction of the completion's characters that are the
    asked digit, so partial answers earn partial credit. A random policy scores about 0.001;
    learning to emit digits lifts that to about 0.1, and only copying the asked one gets near 1."""
    while True:
        digit = str(rng.randrange(10))
        yield {"prompt": f"Repeat this digit: {digit}", "answer": digit}


LETTERS = "aeost"


def repeat_letter(rng: random.Random, split: str = "train") -> Iterator[Row]:
    """``Repeat this letter: e`` -> answer ``e``, with a letter from ``aeost`` (both splits alike).
    Scored like ``repeat_digit``, but these letters fill 5-10% of a random tiny model's output, so a policy
    gets a dense signal from the start: the task for estimators without group std normalisation
    (RLOO, REINFORCE++, PPO's critic), which barely move on ``repeat_digit``'s ~0.001 rewards."""
    while True:
        letter = rng.choice(LETTERS)
        yield {"prompt": f"Repeat this letter: {letter}", "answer": letter}


ARITHMETIC_OPERANDS = {"+": 50, "-": 50, "*": 12}
"""Largest operand of each operation (operands are drawn uniformly from 0 to it)."""

ARITHMETIC_HELD_OUT_PERCENT = 10
"""Share of arithmetic problems reserved for the ``eval`` split (by a hash of the problem)."""

ARITHMETIC_PROMPT = "What is {a} {op} {b}? Put the final answer in \\boxed{{}}."


def is_held_out(a: int, op: str, b: int) -> bool:
    """Whether the problem ``a op b`` belongs to the ``eval`` split: a fixed crc32 hash of the
    problem, so the answer is the same in every process, for every seed."""
    return zlib.crc32(f"{a}{op}{b}".encode()) % 100 < ARITHMETIC_HELD_OUT_PERCENT


def arithmetic(rng: random.Random, split: str = "train") -> Iterator[Row]:
    """``What is 23 + 41? Put the final answer in \\boxed{}.`` -> answer ``64``; ``+`` and ``-``
    with operands up to 50, ``*`` up to 12 (answers may be negative). Scored by
    ``rewards/math_answer.py:math_answer``, which reads the last ``\\boxed{}``. About 10% of the
    ~5,400 distinct problems form the ``eval`` split (:func:`is_held_out`); ``train`` never yields
    them, so held-out accuracy measures arithmetic, not recall."""
    want_held_out = split == "eval"
    ops = sorted(ARITHMETIC_OPERANDS)
    while True:
        op = rng.choice(ops)
        a, b = rng.randint(0, ARITHMETIC_OPERANDS[op]), rng.randint(0, ARITHMETIC_OPERANDS[op])
        if is_held_out(a, op, b) != want_held_out:
            continue
        result = a + b if op == "+" else a - b if op == "-" else a * b
        yield {"prompt": ARITHMETIC_PROMPT.format(a=a, op=op, b=b), "answer": str(result)}


TASKS: dict[str, Callable[[random.Random, str], Iterator[Row]]] = {
    "repeat_digit": repeat_digit,
    "repeat_letter": repeat_letter,
    "arithmetic": arithmetic,
}


def builtin_task(name: str, seed: int, split: str = "train") -> Iterator[Row]:
    """The endless row stream of built-in task ``name`` for ``split`` (``train`` or ``eval``),
    deterministic for a seed."""
    if name not in TASKS:
        raise ValueError(f"unknown built-in task 'builtin:{name}'; known: {', '.join(sorted(TASKS))}")
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: expected 'train' or 'eval'")
    return TASKS[name](random.Random(seed), split)
