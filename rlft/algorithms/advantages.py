"""Advantage estimators: per-sample rewards -> per-sample advantages."""

import torch
from torch import Tensor

from rlft.algorithms.registry import register_advantage


@register_advantage("grpo")
def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, *, norm_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Group-relative advantages of GRPO.

    DeepSeekMath (Shao et al. 2024, arXiv 2402.03300), section 4.1.2, outcome supervision: every
    token of sample i gets Â_{i,t} = (r_i − mean(r)) / std(r), with mean and std over the G
    samples of the same prompt. Dr. GRPO (Liu et al. 2025, arXiv 2503.20783) drops the std
    division (`norm_by_std=False`) because it biases updates towards too easy or too hard prompts.

    Args:
        rewards: float [N]; NaN means "no opinion": excluded from its group's mean and std, and
            given advantage 0.
        group_ids: long [N]; samples of one prompt share an id (any order, any values).
        norm_by_std: divide by the group's Bessel-corrected sample std (+ eps), as the reference
            implementations do.
        eps: added to the std.

    Returns:
        float [N] advantages. Groups with fewer than two valid samples or with equal rewards get
        exactly 0.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be [N]")
    unique_ids, group = torch.unique(group_ids, return_inverse=True)
    num_groups = len(unique_ids)
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0)

    def per_group(values: Tensor, reduce: str = "sum") -> Tensor:
        out = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, group, values, reduce, include_self=False)

    count = per_group(valid.to(r.dtype))
    mean = per_group(r) / count.clamp(min=1)
    # A constant group (which includes a single valid sample) gets exactly 0: `mean` can be off
    # by rounding, so compare max and min instead of trusting r - mean == 0.
    highest = per_group(rewards.masked_fill(~valid, -torch.inf), "amax")
    lowest = per_group(rewards.masked_fill(~valid, torch.inf), "amin")
    constant = highest == lowest
    centered = torch.where(valid & ~constant[group], r - mean[group], 0.0)
    if not norm_by_std:
        return centered
    std = (per_group(centered**2) / (count - 1).clamp(min=1)).sqrt()
    return centered / torch.where(std > 0, std + eps, 1.0)[group]  # std == 0 -> centered == 0
