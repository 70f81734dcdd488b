"""Format rewards: the R1 think/answer layout, and a regular expression to match."""

import re

_THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def think_answer_format(prompts: list[str | list[dict[str, str]]], completions: list[str]) -> list[float]:
    r"""1.0 if the completion is ``<think>...</think>`` then ``<answer>...</answer>``, else 0.0.

    The DeepSeek-R1-Zero template (DeepSeek-AI 2025, arXiv 2501.12948, Table 1): reasoning in
    think tags, then the answer in answer tags. Leading and trailing whitespace is allowed, anything
    else outside the tags is not, and each of the four tags must appear exactly once. If the prompt
    ends with ``<think>`` (a template that pre-fills it), the completion is scored as if it began
    with it; for a chat prompt (a list of messages) that is its last message.
    """
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = completion.strip()
        last = prompt if isinstance(prompt, str) else (prompt[-1]["content"] if prompt else "")
        if last.rstrip().endswith("<think>"):
            text = "<think>" + text
        once = all(text.count(tag) == 1 for tag in _TAGS)
        scores.append(float(once and _THINK_ANSWER.fullmatch(text) is not None))
    return scores


def regex_match(
    prompts: list[str], completions: list[str], pattern: str | list[str], mode: str = "search"
) -> list[float]:
    """1.0 where ``pattern`` matches the completion, else 0.0.

    ``pattern`` is a Python regular expression, either one for all samples, set as a parameter
    (``reward.params.regex_match.pattern='^\\d+$'``), or one per sample from a dataset column named
    ``pattern``. ``mode``: ``search`` (anywhere), ``match`` (at the start) or ``fullmatch`` (the
    whole completion). A pattern that can backtrack catastrophically is bounded by
    ``reward.timeout_s`` like any slow reward.
    """
    if mode not in ("search", "match", "fullmatch"):
        raise ValueError(f"regex_match: mode must be search, match or fullmatch, got {mode!r}")
    patterns = pattern if isinstance(pattern, list) else [pattern] * len(completions)
    compiled = {p: re.compile(p) for p in set(patterns)}
    return [
        float(getattr(compiled[p], mode)(completion) is not None)
        for completion, p in zip(completions, patterns, strict=True)
    ]
