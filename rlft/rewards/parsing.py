"""Answer extraction shared by the reward library (``rewards/*.py``): plain string scans, linear time.

Every helper returns the *last* occurrence: a model that writes several answers is judged on its
final one. All return ``None`` when there is nothing to extract.
"""

import re
from fractions import Fraction

MAX_NUMBER_CHARS = 100
"""Longer digit strings are not read as numbers."""
_HASH_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_MARKER = re.compile(r"answer[ \t]*:", re.IGNORECASE)
_REST_OF_LINE = re.compile(r"\s*([^\n]*)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``), braces balanced; None if unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_brace = text.find("{", start)
    if open_brace < 0 or text[start:open_brace].strip() not in ("\\boxed", "\\fbox"):
        return None
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i].strip()
    return None


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>...</tag>`` pair, stripped."""
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    open_ = text.rfind(f"<{tag}>", 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(tag) + 2 : close].strip()


def last_hash_answer(text: str) -> str | None:
    """What follows the last ``####`` on its line (GSM8K's answer marker), stripped."""
    position = text.rfind("####")
    if position < 0:
        return None
    return _HASH_ANSWER.match(text, position).group(1).strip()


def last_answer_line(text: str) -> str | None:
    """What follows the last ``Answer:`` (any case, e.g. ``Final answer :``) up to the end of the
    line, stripped; if nothing but blanks follows it on its line, the next non-blank line. This is
    the answer format of DAPO-Math-17k's prompts ("The last line of your response should be of the
    form Answer: $Answer"). None without a marker or with nothing after the last one."""
    markers = list(_ANSWER_MARKER.finditer(text))
    if not markers:
        return None
    return _REST_OF_LINE.match(text, markers[-1].end()).group(1).strip() or None


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (``-1,234.5``, ``$72``, ``.5``), as written."""
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def to_number(text: str) -> Fraction | None:
    """The first number in ``text`` as an exact Fraction, ignoring ``$`` and thousands commas.

    ``"$1,234.50"`` -> 2469/2, ``"72.0 apples"`` -> 72, ``"７２"`` (Unicode digits) -> 72; None if
    ``text`` holds no number or one longer than ``MAX_NUMBER_CHARS`` (no answer is that long).
    """
    match = _NUMBER.search(text)
    if match is None or len(match.group(0)) > MAX_NUMBER_CHARS:
        return None
    return Fraction(match.group(0).replace("$", "").replace(",", ""))
