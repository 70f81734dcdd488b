"""Policy losses (per token) and the aggregations that reduce them to a scalar.

A policy loss is `fn(logprobs, old_logprobs, advantages, mask, cfg) -> (per_token_loss, info)`,
all tensors [N, T]; the loss is 0 where masked and `info` holds detached [N, T] metrics:
"clipped" (float 0/1, the tokens whose gradient the clipping removed) and "ratio" (π/π_old, 1
where masked). Log-ratios are masked before exp, so padding can never overflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlft.algorithms.registry import register_loss_agg, register_policy_loss

if TYPE_CHECKING:
    from rlft.config import AlgorithmConfig

# ---------------------------------------------------------------- helpers


def _masked_log_ratio(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """(bool mask, log π − log π_old on completion tokens and 0 elsewhere), all shapes checked."""
    for name, x in (("old_logprobs", old_logprobs), ("advantages", advantages), ("mask", mask)):
        if x.shape != logprobs.shape:  # an [N] advantage would silently broadcast as [T]
            raise ValueError(f"{name} {tuple(x.shape)} must be [N, T] like logprobs {tuple(logprobs.shape)}")
    mask = mask.bool()
    return mask, torch.where(mask, logprobs - old_logprobs, 0.0)


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, Tensor]:
    """−min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) where masked in, and where the clip is active."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * advantages
    loss = torch.where(mask, -torch.minimum(unclipped, clipped), 0.0)
    return loss, (clipped < unclipped) & mask


def _with_info(loss: Tensor, clipped: Tensor, ratio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    return loss, {"clipped": clipped.to(loss.dtype).detach(), "ratio": ratio.detach()}


# ---------------------------------------------------------------- policy losses


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss of PPO, per token.

    PPO (Schulman et al. 2017, arXiv 1707.06347), eq. 7:
        L_t = −min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t),  ρ_t = π(o_t) / π_old(o_t),
    which is also the per-token term of the GRPO objective (DeepSeekMath, arXiv 2402.03300,
    eq. 3; its KL term is added separately, see `rlft.algorithms.kl`). DAPO (arXiv 2503.14476,
    section 3.1, "clip-higher") decouples the bounds: ε_high = `cfg.clip_high` > ε_low = `cfg.clip_low`
    lets low-probability tokens grow.

    "clipped" marks the tokens where the clipped branch is the active min (no gradient).
    """
    mask, log_ratio = _masked_log_ratio(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(log_ratio)
    loss, clipped = _clipped_surrogate(ratio, advantages, mask, cfg)
    return _with_info(loss, clipped, ratio)


@register_policy_loss("dual_clip")
def dual_clip_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Dual-clip PPO: the PPO-clip loss, capped at −c·A for negative advantages.

    Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning"
    (arXiv 1912.09729), dual-clip PPO: for A_t < 0 the objective is max(min(ρA, clip(ρ)A), c·A), i.e.
    the loss is L_t = min(L_t^PPO, −c·A_t) with c = `cfg.dual_clip_c` > 1. Without it a token with
    A < 0 and a huge ratio ρ (an off-policy sample the policy now likes) gives an unbounded loss.

    "clipped" counts both the PPO-clipped and the dual-clipped tokens (neither gets a gradient).
    """
    if cfg.dual_clip_c <= 1:
        raise ValueError(f"algorithm.dual_clip_c must be > 1 for dual-clip PPO, got {cfg.dual_clip_c}")
    mask, log_ratio = _masked_log_ratio(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(log_ratio)
    loss, clipped = _clipped_surrogate(ratio, advantages, mask, cfg)
    cap = -cfg.dual_clip_c * advantages
    dual = (advantages < 0) & (loss > cap) & mask
    return _with_info(torch.where(dual, cap, loss), clipped | dual, ratio)


@register_policy_loss("gspo")
def gspo_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Group Sequence Policy Optimization: a sequence-level importance ratio, clipped per sequence.

    Zheng et al. 2025 (arXiv 2507.18071), eq. 5-7: s_i = (π(y_i) / π_old(y_i))^(1/|y_i|)
    = exp(mean over the sequence's tokens of (log π − log π_old)), and the loss is
    −min(s_i·A_i, clip(s_i, 1 − ε_low, 1 + ε_high)·A_i). Implemented in the paper's GSPO-token
    form: s_{i,t} = sg[s_i] · π(y_t) / sg[π(y_t)], whose value is s_i and whose gradient is
    s_i ∇log π(y_t); with A_{i,t} = A_i and `seq_mean_token_mean` aggregation this is exactly
    GSPO's gradient, and per-token advantages (taken as given) also work. The paper's ε are small
    (3e-4 / 4e-4); set them through `cfg.clip_low` / `cfg.clip_high`.

    "ratio" is s_i on each completion token; "clipped" marks the tokens of clipped sequences.
    """
    mask, log_ratio = _masked_log_ratio(logprobs, old_logprobs, advantages, mask)
    seq_log_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)
    token_log_ratio = seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach()
    ratio = torch.exp(torch.where(mask, token_log_ratio, 0.0))
    loss, clipped = _clipped_surrogate(ratio, advantages, mask, cfg)
    return _with_info(loss, clipped, ratio)


@register_policy_loss("reinforce")
def reinforce_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain on-policy policy gradient: L_t = −A_t · log π(o_t).

    REINFORCE (Williams 1992), as used by RLOO (Ahmadian et al. 2024, arXiv 2402.14740) and
    REINFORCE++ (arXiv 2501.03262) without clipping: the gradient is −A_t ∇log π(o_t). Only
    correct for samples from the current policy (one update per batch). No ratio enters the loss;
    "ratio" = π/π_old is reported for monitoring and "clipped" is all 0.
    """
    mask, log_ratio = _masked_log_ratio(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(log_ratio)
    loss = torch.where(mask, -advantages * logprobs, 0.0)
    return _with_info(loss, torch.zeros_like(mask), ratio)


def truncated_is_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights w_t = min(π_old(o_t) / π_sampler(o_t), cap), detached.

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
    (blog post, https://fengyao.notion.site/off-policy-rl): the rollout engine (vLLM, other
    kernels or precision) samples from π_sampler, not from the learner's π_old, so the policy
    gradient is reweighted per token by the truncated ratio, E_{π_sampler}[min(π_old/π_sampler, C)
    ∇ ...]. Multiply the per-token policy loss by w. 1 outside the mask.
    """
    if cap <= 0:
        raise ValueError(f"truncated importance sampling needs algorithm.tis_cap > 0, got {cap}")
    mask = mask.bool()
    weights = torch.exp(torch.where(mask, old_logprobs - sampler_logprobs, 0.0)).clamp(max=cap)
    return torch.where(mask, weights, 1.0).detach()


# ---------------------------------------------------------------- aggregations
#
# `fn(per_token, mask, *, num_tokens=None, num_seqs=None, horizon=None) -> scalar`. With gradient
# accumulation pass the counts of the whole mini-batch (num_tokens = its completion tokens,
# num_seqs = its sequences): the micro-batch losses then sum to the mini-batch loss, gradients
# included. Without them the counts of `mask` itself are used. Unused arguments keep the signature
# shared. A sequence with an all-zero mask contributes 0 (and counts in the default num_seqs).


def _divide(total: Tensor, count: float | Tensor) -> Tensor:
    """total / count with the count clamped to >= 1, so an empty batch or row gives 0, not NaN."""
    return total / torch.as_tensor(count, dtype=total.dtype, device=total.device).clamp(min=1)


def _masked_sum(per_token: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    masked = torch.where(mask.bool(), per_token, 0.0)
    return masked.sum() if dim is None else masked.sum(dim)


def _rows(per_token: Tensor, num_seqs: float | Tensor | None) -> float | Tensor:
    return per_token.shape[0] if num_seqs is None else num_seqs


@register_loss_agg("token_mean")
def token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    horizon: int | None = None,
) -> Tensor:
    """Mean over all unmasked tokens of the batch: Σ_{i,t} L_{i,t} / num_tokens.

    Every token weighs the same, so long completions are not down-weighted: DAPO's token-level
    policy gradient loss (arXiv 2503.14476, section 3.3).
    """
    return _divide(_masked_sum(per_token, mask), mask.bool().sum() if num_tokens is None else num_tokens)


@register_loss_agg("seq_mean_token_mean")
def seq_mean_token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    horizon: int | None = None,
) -> Tensor:
    """Mean over sequences of each sequence's token mean: Σ_i (1/|o_i|) Σ_t L_{i,t} / num_seqs.

    The sample-level average of the GRPO objective (DeepSeekMath, arXiv 2402.03300, eq. 3:
    1/G Σ_i 1/|o_i| Σ_t) and of GSPO (arXiv 2507.18071, eq. 5).
    """
    per_seq = _divide(_masked_sum(per_token, mask, dim=-1), mask.bool().sum(-1))
    return _divide(per_seq.sum(), _rows(per_token, num_seqs))


@register_loss_agg("seq_mean_token_sum")
def seq_mean_token_sum(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    horizon: int | None = None,
) -> Tensor:
    """Mean over sequences of each sequence's token sum: Σ_i Σ_t L_{i,t} / num_seqs.

    The sequence-level REINFORCE objective (the log-probability of a whole completion times its
    advantage, e.g. RLOO, arXiv 2402.14740); longer completions weigh more.
    """
    return _divide(_masked_sum(per_token, mask), _rows(per_token, num_seqs))


@register_loss_agg("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    horizon: int | None = None,
) -> Tensor:
    """Token sum over the batch divided by a constant: Σ_{i,t} L_{i,t} / (num_seqs · horizon).

    Dr. GRPO (Liu et al. 2025, arXiv 2503.20783, section 3.1 and its released code): GRPO's 1/|o_i|
    gives a length bias (short correct answers are pushed up more, long wrong ones are punished
    less), so every sequence's token sum is divided by the same constant, the generation budget
    `horizon` (max completion length, rollout.sampling.max_new_tokens).
    """
    if horizon is None:
        raise ValueError(
            "algorithm.loss_agg=seq_mean_token_sum_norm needs horizon (the max completion length)"
        )
    return _divide(_masked_sum(per_token, mask), _rows(per_token, num_seqs)) / horizon
