"""On-policy distillation: the student samples, a frozen teacher scores the student's own tokens.

Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
Mistakes" (GKD, arXiv 2306.13649): training on the student's own samples (on-policy, λ = 1 in
their eq. 2) with the reverse KL D_KL(π_student || π_teacher) as the divergence removes the
train/inference mismatch of distilling on fixed sequences. Qwen3 (arXiv 2505.09388, section 4.5,
"on-policy distillation") trains its small models the same way, the student generating and the
teacher's log-probs as the target. Here the reverse KL is estimated from the sampled tokens and
optimised as a policy gradient, so distillation is one advantage estimator and config; the loss,
the learner step and the rollout path are those of RL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlft.algorithms.advantages import GROUP_STD_EPS, AdvantageInput, discounted_cumsum, group_stats
from rlft.algorithms.registry import register_advantage

if TYPE_CHECKING:
    from rlft.config import AlgorithmConfig


@register_advantage("reverse_kl", needs_teacher=True)
def reverse_kl_advantages(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """Advantages of on-policy distillation: the negative reverse KL to the teacher, per token,
    plus (optionally) the task reward's group advantage.

    With y ~ π and the per-token reward r_t = log π_T(y_t | y_<t) − log π(y_t | y_<t), the sum
    Σ_t r_t is a single-sample estimate of −D_KL(π || π_T) for the sequence (GKD, arXiv 2306.13649,
    the on-policy reverse-KL objective), and the policy gradient with the return-to-go
    Â_t = Σ_{k>=t} γ^{k−t} r_k as the advantage is the gradient of −D_KL for γ = 1 (the term
    of r_t's own dependence on π has expectation 0 under y ~ π). γ = `cfg.gamma` < 1 credits each
    token with fewer of the later tokens' terms (γ = 0: only its own, lower variance, biased).

        Â_{i,t} = Σ_{k>=t} γ^{k−t} (c · (log π_T − log π_old)_{i,k} + token_rewards_{i,k}) + Â^task_i

    with c = `cfg.distill_coef`, token_rewards the per-token penalties of `algorithm.kl.in_reward`
    (if any), and Â^task_i GRPO's group advantage of the outcome reward (DeepSeekMath, arXiv
    2402.03300, section 4.1.2; divided by the group std when `cfg.norm_adv_by_std`), 0 for samples
    without a reward (NaN: no reward function) or in groups without signal. log π_old is the
    policy's log-prob before this step's update (`data.logprobs`). Returns = advantages.

    Unlike the reward-only estimators, a sample without a reward still gets the teacher's signal.
    Without a teacher (no `teacher_logprobs`; validation requires `teacher.path` for this
    estimator) only the task part remains.
    """
    if (data.teacher_logprobs is None) != (data.logprobs is None):
        raise ValueError("reverse_kl needs both the teacher's and the policy's log-probs of the samples")
    stats = group_stats(data.rewards, data.group_ids)
    mask = data.mask.to(stats.centered.dtype)
    rewards = torch.zeros_like(mask)
    if data.teacher_logprobs is not None:
        rewards = cfg.distill_coef * torch.where(mask.bool(), data.teacher_logprobs - data.logprobs, 0.0)
    if data.token_rewards is not None:  # e.g. a KL penalty to the reference (algorithm.kl.in_reward)
        rewards = rewards + torch.where(mask.bool(), data.token_rewards, 0.0)
    distill = discounted_cumsum(rewards, cfg.gamma) * mask
    task = stats.centered
    if cfg.norm_adv_by_std:
        task = task / torch.where(stats.std > 0, stats.std + GROUP_STD_EPS, 1.0)
    advantages = distill + task[:, None] * mask
    return advantages, advantages
