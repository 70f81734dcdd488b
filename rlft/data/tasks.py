"""Built-in synthetic tasks: prompts generated on the fly, with a ground-truth column.

They exist so that a run can start and visibly learn with no dataset download and no GPU: a tiny
random model raises their reward within a couple of minutes on a CPU. Select one with
``data.path=builtin:<name>``; each yields rows ``{"prompt": ..., <ground-truth columns>}`` forever.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

Row = dict[str, str]


def repeat_digit(rng: random.Random) -> Iterator[Row]:
    """``Repeat this digit: 7`` -> answer ``7``. Scored by ``rewards/synthetic.py:repeat_char``:
    the fraction of the completion's characters that are the asked digit, so partial answers earn
    partial credit. A random policy scores about 0.001; learning to emit digits lifts that to about
    0.1, and only copying the asked one gets near 1."""
    while True:
        digit = str(rng.randrange(10))
        yield {"prompt": f"Repeat this digit: {digit}", "answer": digit}


LETTERS = "aeost"


def repeat_letter(rng: random.Random) -> Iterator[Row]:
    """``Repeat this letter: e`` -> answer ``e``, with a letter from ``aeost``. Scored like
    ``repeat_digit``, but these letters fill 5-10% of a random tiny model's output, so a policy
    gets a dense signal from the start: the task for estimators without group std normalisation
    (RLOO, REINFORCE++, PPO's critic), which barely move on ``repeat_digit``'s ~0.001 rewards."""
    while True:
        letter = rng.choice(LETTERS)
        yield {"prompt": f"Repeat this letter: {letter}", "answer": letter}


TASKS: dict[str, Callable[[random.Random], Iterator[Row]]] = {
    "repeat_digit": repeat_digit,
    "repeat_letter": repeat_letter,
}


def builtin_task(name: str, seed: int) -> Iterator[Row]:
    """The endless row stream of built-in task ``name``, deterministic for a seed."""
    if name not in TASKS:
        raise ValueError(f"unknown built-in task 'builtin:{name}'; known: {', '.join(sorted(TASKS))}")
    return TASKS[name](random.Random(seed))
