"""Policy losses (per token) and the aggregations that reduce them to a scalar."""

import torch
from torch import Tensor

from rlft.algorithms.registry import register_loss_agg, register_policy_loss


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss of PPO, per token.

    PPO (Schulman et al. 2017, arXiv 1707.06347), eq. 7:
        L = -min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A),  ρ = π(o_t) / π_old(o_t),
    which is also the per-token term of the GRPO objective (DeepSeekMath, arXiv 2402.03300,
    eq. 3; its KL term is added separately, see `rlft.algorithms.kl`). DAPO (arXiv 2503.14476)
    decouples the bounds, "clip-higher": ε_high > ε_low lets low-probability tokens grow.

    Args:
        logprobs: [N, T] log-probs of the sampled tokens under the policy being trained.
        old_logprobs: [N, T] log-probs under the policy that sampled them.
        advantages: [N] (one per sequence, broadcast over tokens) or [N, T].
        mask: [N, T] float or bool, 1 on completion tokens.
        clip_low, clip_high: ε_low and ε_high.

    Returns:
        per-token loss [N, T] (0 where masked) and detached metrics: "clipped" (float 0/1, where
        the clipped branch is the active min, so the token gets no gradient) and "ratio" (ρ;
        1 where masked, as the log-ratio is masked before exp so padding can't overflow).
    """
    mask = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(torch.where(mask, logprobs - old_logprobs, 0.0))
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    loss = torch.where(mask, -torch.minimum(unclipped, clipped), 0.0)
    is_clipped = (clipped < unclipped) & mask
    return loss, {"clipped": is_clipped.to(loss.dtype).detach(), "ratio": ratio.detach()}


def _divide(total: Tensor, count: float | Tensor) -> Tensor:
    """total / count with the count clamped to >= 1, so an empty batch or row gives 0, not NaN."""
    return total / torch.as_tensor(count, dtype=total.dtype, device=total.device).clamp(min=1)


@register_loss_agg("token_mean")
def token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
) -> Tensor:
    """Mean over all unmasked tokens of the batch: sum(loss·mask) / num_tokens.

    Every token weighs the same, so long completions are not down-weighted: DAPO's token-level
    policy gradient loss (arXiv 2503.14476, section 3.3), also used by Dr. GRPO (arXiv 2503.20783).
    With gradient accumulation pass `num_tokens` = the token count of the whole mini-batch:
    the sum of the micro-batch losses then equals the full-batch loss, gradients included.
    `num_seqs` is unused; it keeps the signature shared with the other aggregations.
    """
    mask = mask.bool()
    total = torch.where(mask, per_token, 0.0).sum()
    return _divide(total, mask.sum() if num_tokens is None else num_tokens)


@register_loss_agg("seq_mean_token_mean")
def seq_mean_token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
) -> Tensor:
    """Mean over sequences of each sequence's token mean: Σ_i (1/|o_i|) Σ_t L_{i,t} / num_seqs.

    The sample-level average of the GRPO objective (DeepSeekMath, arXiv 2402.03300, eq. 3:
    1/G Σ_i 1/|o_i| Σ_t).
    With gradient accumulation pass `num_seqs` = the sequence count of the whole mini-batch.
    A sequence with an all-zero mask contributes 0 (and still counts in the default `num_seqs`,
    the number of rows). `num_tokens` is unused; it keeps the signature shared.
    """
    mask = mask.bool()
    per_seq = _divide(torch.where(mask, per_token, 0.0).sum(-1), mask.sum(-1))
    return _divide(per_seq.sum(), per_token.shape[0] if num_seqs is None else num_seqs)
