"""GSM8K correctness (Cobbe et al. 2021, arXiv 2110.14168): the final number, compared exactly."""

from rlft.rewards.parsing import last_boxed, last_hash_answer, last_number, to_number


def gsm8k(prompts: list[str], completions: list[str], answer: list[str], strict: bool = False) -> list[float]:
    r"""1.0 where the completion's final number equals the ground truth's, else 0.0.

    Columns: ``answer``, GSM8K's ground truth: the full solution ending in ``#### 72``, or just
    the number. Parameter (``reward.params.gsm8k.strict``): ``strict=True`` scores only answers
    given with a marker.

    The model's answer is, in this order: the text after its last ``#### ``, else its last
    ``\boxed{...}``, else (unless ``strict``) the last number anywhere in the completion. The first
    number in that text is compared with the ground truth's as an exact fraction, so ``$1,080``,
    ``1080.0`` and ``1080`` are equal. No number = 0.0.
    """
    scores = []
    for completion, truth in zip(completions, answer, strict=True):
        expected = to_number(last_hash_answer(str(truth)) or str(truth))
        if expected is None:
            raise ValueError(f"gsm8k: ground truth {truth!r} holds no number; check the 'answer' column")
        predicted = _predicted(completion, strict)
        scores.append(float(predicted is not None and to_number(predicted) == expected))
    return scores


def _predicted(completion: str, strict: bool) -> str | None:
    """The text holding the model's final answer (see :func:`gsm8k`)."""
    for found in (last_hash_answer(completion), last_boxed(completion)):
        if found:
            return found
    return None if strict else last_number(completion)
