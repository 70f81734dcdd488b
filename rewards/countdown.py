"""Countdown arithmetic puzzles as in TinyZero (Pan et al. 2025, github.com/Jiayi-Pan/TinyZero).

TinyZero's ``verl/utils/reward_score/countdown.py`` (commit f36b1b8) scores 1.0 for a correct
equation, ``format_score=0.1`` for any extracted ``<answer>`` that is wrong (numbers not used
exactly once, not evaluable, or a wrong value), and 0 when there is no ``<answer>``. The values
here are the same; the checks differ on purpose: the equation is parsed with :mod:`ast` instead of
``eval``, computed with exact fractions instead of floats, and taken from the last ``<answer>``
anywhere in the completion (TinyZero only looks at the completion's last line).
"""

import ast
import operator
from collections.abc import Sequence
from fractions import Fraction

from rlft.rewards.parsing import last_tag

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
MAX_EQUATION_CHARS = 1_000
"""Longer answers are not parsed (a valid equation over a handful of numbers is far shorter)."""


def countdown(
    prompts: list[str],
    completions: list[str],
    target: list[int],
    nums: list[Sequence[int]],
    format_score: float = 0.1,
    score: float = 1.0,
) -> list[float]:
    """``score`` for a correct equation, ``format_score`` for a wrong one, 0.0 for none.

    Columns: ``target`` (int) and ``nums`` (list of ints). Parameters (``reward.params.countdown``):
    ``format_score`` and ``score``, TinyZero's defaults.

    The equation is the content of the completion's last ``<answer>...</answer>``. It is correct
    when it is an arithmetic expression of integers with ``+ - * /``, unary minus and parentheses,
    uses each number of ``nums`` exactly once (and no other number), and equals ``target`` exactly
    (division is exact: ``(1/3)*3 == 1``; dividing by zero makes it wrong).
    """
    return [
        _score(completion, int(t), [int(n) for n in ns], format_score, score)
        for completion, t, ns in zip(completions, target, nums, strict=True)
    ]


def _score(completion: str, target: int, nums: list[int], format_score: float, score: float) -> float:
    equation = last_tag(completion, "answer")
    if equation is None:
        return 0.0
    value = evaluate(equation, nums)
    return score if value is not None and value == target else format_score


def evaluate(equation: str, nums: list[int]) -> Fraction | None:
    """The exact value of ``equation`` if it is well formed and uses exactly ``nums``, else None."""
    if len(equation) > MAX_EQUATION_CHARS:
        return None
    try:
        tree = ast.parse(equation.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    used: list[int] = []
    try:
        value = _value(tree.body, used)
    except (_Malformed, ZeroDivisionError, RecursionError):
        return None
    return value if sorted(used) == sorted(nums) else None


class _Malformed(Exception):
    """A node that is not integer arithmetic."""


def _value(node: ast.expr, used: list[int]) -> Fraction:
    """Evaluate an arithmetic node exactly, recording the integer literals it uses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.left, used), _value(node.right, used))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, used)
    raise _Malformed(ast.dump(node)[:100])
