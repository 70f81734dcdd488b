"""Rewards for the built-in synthetic tasks (rlft/data/tasks.py)."""


def repeat_char(prompts: list[str], completions: list[str], answer: list[str]) -> list[float]:
    """Fraction of the completion's non-space characters that are the asked character ``answer``.

    "Repeat this digit: 7" -> "7 7 7 7" scores 1.0, "77 cats" 0.4, "" 0.0. Partial credit gives a
    random policy some signal to climb from.
    """
    scores = []
    for completion, char in zip(completions, answer, strict=True):
        chars = [c for c in completion if not c.isspace()]
        scores.append(sum(c == char for c in chars) / len(chars) if chars else 0.0)
    return scores
