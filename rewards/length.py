"""Length rewards: a linear penalty around a target length, and DAPO's soft overlong punishment.

Lengths are counted in characters, or in tokens when the parameter ``tokenizer`` names a tokenizer
(a directory, a hub id, or ``tiny``), loaded once per process.
"""

from functools import lru_cache
from typing import Any


def length_penalty(
    prompts: list[str],
    completions: list[str],
    target_length: int,
    scale: float = 1.0,
    only_longer: bool = False,
    tokenizer: str | None = None,
) -> list[float]:
    """``-scale * |length - target_length| / target_length`` per completion (0 at the target).

    Parameters (``reward.params.length_penalty``): ``target_length`` (required, > 0), ``scale``,
    ``only_longer`` (no penalty for completions shorter than the target) and ``tokenizer``.
    """
    if target_length <= 0:
        raise ValueError(f"length_penalty: target_length must be > 0, got {target_length}")
    scores = []
    for length in lengths(completions, tokenizer):
        excess = length - target_length
        if only_longer:
            excess = max(excess, 0)
        scores.append(0.0 - scale * abs(excess) / target_length)
    return scores


def dapo_overlong(
    prompts: list[str],
    completions: list[str],
    max_length: int,
    buffer_length: int,
    penalty: float = 1.0,
    tokenizer: str | None = None,
) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13) as a reward.

    0 up to ``max_length - buffer_length``, then falling linearly to ``-penalty`` at ``max_length``
    and beyond; the formula is :func:`rlft.algorithms.dapo.overlong_penalty`. Parameters
    (``reward.params.dapo_overlong``): ``max_length``, ``buffer_length``, ``penalty``, ``tokenizer``.

    For the token-exact version against the rollout's own ``max_new_tokens``, prefer
    ``algorithm.overlong_buffer_len`` (applied by the trainer to the sampled token ids); this
    function is for a penalty in characters, or against another length or tokenizer.
    """
    import torch  # here, not at the top: length_penalty works without torch

    from rlft.algorithms.dapo import overlong_penalty

    counted = torch.tensor(lengths(completions, tokenizer), dtype=torch.float64)
    return overlong_penalty(counted, max_length, buffer_length, penalty).tolist()


def lengths(completions: list[str], tokenizer: str | None) -> list[int]:
    """Characters per completion, or tokens with the named ``tokenizer``."""
    if tokenizer is None:
        return [len(c) for c in completions]
    encode = _tokenizer(tokenizer)
    return [len(ids) for ids in encode(completions, add_special_tokens=False)["input_ids"]]


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from rlft.config import ModelConfig
    from rlft.modeling import load_tokenizer

    return load_tokenizer(ModelConfig(path=path))
