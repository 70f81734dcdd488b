"""DAPO's sampling and reward-shaping pieces (Yu et al. 2025, arXiv 2503.14476).

The other two DAPO pieces are a config choice: clip-higher (`algorithm.clip_high` > `clip_low`)
and the token-level loss (`algorithm.loss_agg=token_mean`).
"""

import torch
from torch import Tensor

from rlft.algorithms.advantages import group_stats


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, penalty: float = 1.0) -> Tensor:
    """Soft overlong punishment, DAPO eq. 13, added to the reward of each completion.

    With L_max = `max_len` and L_cache = `buffer_len`:
        0                                  if |y| <= L_max − L_cache
        ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| <= L_max
        −1                                 if |y| > L_max
    times `penalty`. Completions are cut at L_max, so a truncated one (|y| = L_max) gets −penalty.
    Returns a float tensor shaped like `lengths`.
    """
    if not 0 < buffer_len <= max_len:
        raise ValueError(
            f"algorithm.overlong_buffer_len must be in (0, {max_len}] (the max completion length), "
            f"got {buffer_len}"
        )
    if not lengths.is_floating_point():
        lengths = lengths.to(torch.get_default_dtype())
    return ((max_len - buffer_len - lengths) / buffer_len).clamp(-1.0, 0.0) * penalty


def groups_with_signal(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """bool [N]: True for the samples whose group has two valid (non-NaN) rewards that differ.

    DAPO dynamic sampling, eq. 11: keep only prompts with 0 < |{correct outputs}| < G, since a
    group whose rewards are all equal has zero advantage and gives no gradient; generalised to
    real-valued rewards, with NaN ("no opinion") rewards ignored.
    """
    return group_stats(rewards, group_ids).signal
