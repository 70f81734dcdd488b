r"""Math answer correctness, checked for mathematical equivalence by Hugging Face's ``math-verify``."""

import logging
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rlft.rewards.parsing import last_answer_line, last_boxed, last_hash_answer, last_tag

_CONFIGS = (LatexExtractionConfig(), ExprExtractionConfig())


class _ManagerBoundsTheTime(logging.Filter):
    """Drop math-verify's 'Timeout is disabled' warning: off the main thread the reward manager's
    ``reward.timeout_s`` is the timeout."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_ManagerBoundsTheTime())


def math_answer(prompt: str, completion: str, answer: str, answer_line: bool = False) -> float:
    r"""1.0 if the completion's final answer is mathematically equal to ``answer``, else 0.0.

    Columns: ``answer``, the ground truth (``\frac{1}{2}``, ``0.5``, ``x=3``, ``(1,2]``; it may also
    be a full solution holding a ``\boxed{}`` or ``#### N``). Parameter
    (``reward.params.math_answer.answer_line``): ``answer_line=True`` reads DAPO-Math-17k's format.

    The model's answer is, in this order: its last ``\boxed{...}``, else its last
    ``<answer>...</answer>``, else the text after its last ``####``. With ``answer_line``, it is
    instead the rest of the line after its last ``Answer:`` (any case; a ``\boxed{}`` in that line
    is unwrapped), which is what DAPO-Math-17k's prompts ask for. A completion with no answer
    scores 0.0; so does one whose answer does not parse. Equivalence is ``math_verify.verify``
    (symbolic and numeric comparison with sympy: ``\frac{1}{2}`` = ``0.5``, ``x=3`` = ``3``, sets,
    intervals). math-verify's own timeout uses SIGALRM, which works only in a main thread; in other
    threads it is off and the reward manager's ``reward.timeout_s`` bounds the call instead.
    """
    predicted = _answer_line(completion) if answer_line else _final_answer(completion)
    if not predicted:
        return 0.0
    expected = _final_answer(answer) or answer
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(_math_mode(expected), extraction_config=_CONFIGS, parsing_timeout=timeout)
    if not gold:
        raise ValueError(f"math_answer: no answer in the ground truth {answer!r}; check the 'answer' column")
    guess = parse(_math_mode(predicted), extraction_config=_CONFIGS, parsing_timeout=timeout)
    return float(bool(guess) and verify(gold, guess, timeout_seconds=timeout))


def _final_answer(text: str) -> str | None:
    """The last boxed, <answer> or #### answer in ``text``."""
    return last_boxed(text) or last_tag(text, "answer") or last_hash_answer(text)


def _answer_line(text: str) -> str | None:
    r"""The answer after the last ``Answer:`` in ``text``, its ``\boxed{}`` unwrapped if it has one."""
    line = last_answer_line(text)
    return (last_boxed(line) or line) if line else None


def _math_mode(answer: str) -> str:
    """``answer`` between ``$`` signs unless it already has math delimiters, so LaTeX parses."""
    return answer if "$" in answer or "\\(" in answer or "\\[" in answer else f"${answer}$"
