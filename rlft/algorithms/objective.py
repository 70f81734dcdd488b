"""The online RL objective of one micro-batch, as one pure function over tensors.

:func:`rl_objective` is the whole loss the learner backpropagates: the policy loss (picked by
``algorithm.policy_loss``, reduced by ``algorithm.loss_agg``, weighted per token by truncated
importance-sampling weights when ``algorithm.tis_cap > 0``), the KL to the reference as a loss term
(``algorithm.kl.estimator``, coefficient ``kl_coef``; left out with ``algorithm.kl.in_reward``,
where the KL is a reward instead), the entropy bonus (``algorithm.entropy_coef``) and, with a
critic, the clipped value loss. The learner's job around it is micro-batching, the backward pass,
data parallelism and the optimizer step.

With gradient accumulation every micro-batch passes the counts of its whole mini-batch
(:class:`LossCounts`), so the micro-batch losses sum to the mini-batch loss, gradients included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlft.algorithms.policy_losses import token_mean, truncated_is_weights
from rlft.algorithms.registry import get_kl, get_loss_agg, get_policy_loss
from rlft.algorithms.value import clipped_value_loss

if TYPE_CHECKING:
    from rlft.config import AlgorithmConfig


@dataclass
class ObjectiveInput:
    """One micro-batch of n samples, every tensor [n, T] (T = the micro-batch's width; column t
    holds completion token t's quantity, 0 outside ``mask``)."""

    logprobs: Tensor
    """log π(o_t) under the policy being trained, with gradient."""
    mask: Tensor
    """1 on completion tokens (the ones trained on), 0 on prompt and padding."""
    advantages: Tensor
    """Â_t from the advantage estimator (constant)."""
    sampler_logprobs: Tensor
    """log π_sampler(o_t): what the rollout engine reported when it sampled the tokens."""
    old_logprobs: Tensor | None = None
    """log π_old(o_t), the policy before this RL step's updates; None = ``logprobs`` detached
    (the first optimizer step on samples of the current policy: ratio 1)."""
    ref_logprobs: Tensor | None = None
    """log π_ref(o_t) under the frozen reference model; None = no KL term."""
    entropy: Tensor | None = None
    """Entropy of the policy's next-token distribution at each token; None = no entropy bonus."""
    values: Tensor | None = None
    """Critic values V(s_t), with gradient; None = no critic loss."""
    old_values: Tensor | None = None
    """V_old(s_t), the critic's values the returns were computed with (for value clipping)."""
    returns: Tensor | None = None
    """R_t, the critic's targets."""


@dataclass(frozen=True)
class LossCounts:
    """What the aggregations divide by: the counts of the whole mini-batch (over all learners)."""

    num_tokens: float
    """Completion tokens of the mini-batch."""
    num_seqs: float
    """Sequences of the mini-batch."""
    horizon: int
    """The generation budget, ``rollout.sampling.max_new_tokens`` (for ``seq_mean_token_sum_norm``)."""


def rl_objective(
    x: ObjectiveInput,
    cfg: AlgorithmConfig,
    kl_coef: float,
    counts: LossCounts,
    *,
    policy_loss: Callable | None = None,
    loss_agg: Callable | None = None,
    kl_estimator: Callable | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to backpropagate for one micro-batch, and its statistics (detached scalars).

        loss = agg(w_t · L_t) + kl_coef · agg(KL_t) − entropy_coef · token_mean(H_t) + token_mean(L^V_t)

    - L_t = ``algorithm.policy_loss``(log π, log π_old, Â, mask), reduced by ``algorithm.loss_agg``;
    - w_t = min(π_old/π_sampler, tis_cap), the truncated IS weights (Yao et al. 2025), 1 when
      ``algorithm.tis_cap = 0``;
    - KL_t = ``algorithm.kl.estimator``(log π, log π_ref), as a loss term unless
      ``algorithm.kl.in_reward`` (GRPO, DeepSeekMath arXiv 2402.03300 eq. 3 with its k3 term);
    - H_t the policy's entropy (the bonus applies when ``algorithm.entropy_coef > 0``);
    - L^V_t = the clipped value loss of the critic (``algorithm.value_clip``); the critic has its
      own parameters, so this term moves only the critic.

    Statistics: ``loss/policy``, ``entropy``, ``clip_frac``, ``logprob_diff/sampler`` (token mean
    of |log π − log π_sampler|), and with a reference ``kl`` (token mean) and ``kl/seq`` (sum per
    sequence), with a critic ``loss/value``. Each is this micro-batch's share of the mini-batch
    value: summed over micro-batches they give the mini-batch's.

    ``policy_loss``, ``loss_agg`` and ``kl_estimator`` are the functions ``cfg`` names (looked up
    when not given; the learner passes the ones it resolved once).
    """
    norm = {"num_tokens": counts.num_tokens, "num_seqs": counts.num_seqs, "horizon": counts.horizon}
    mask, logprobs = x.mask, x.logprobs
    policy_loss = policy_loss or get_policy_loss(cfg.policy_loss)
    loss_agg = loss_agg or get_loss_agg(cfg.loss_agg)
    old = logprobs.detach() if x.old_logprobs is None else x.old_logprobs
    per_token, info = policy_loss(logprobs, old, x.advantages, mask, cfg)
    if cfg.tis_cap > 0:
        per_token = per_token * truncated_is_weights(old, x.sampler_logprobs, mask, cfg.tis_cap)
    loss = aggregated = loss_agg(per_token, mask, **norm)
    stats = {"loss/policy": aggregated.detach()}
    if "clipped" in info:  # a loss of yours may leave it out
        stats["clip_frac"] = token_mean(info["clipped"], mask, **norm)
    # How far the engine's numerics (or stale weights) are from the learner's: ~0 when in sync.
    stats["logprob_diff/sampler"] = token_mean((logprobs.detach() - x.sampler_logprobs).abs(), mask, **norm)
    if x.ref_logprobs is not None:
        kl = (kl_estimator or get_kl(cfg.kl.estimator))(logprobs, x.ref_logprobs) * mask
        if not cfg.kl.in_reward:
            loss = loss + kl_coef * loss_agg(kl, mask, **norm)
        stats["kl"] = token_mean(kl.detach(), mask, **norm)
        stats["kl/seq"] = kl.detach().sum() / counts.num_seqs
    if x.entropy is not None:
        entropy = token_mean(x.entropy, mask, **norm)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * entropy
        stats["entropy"] = entropy.detach()
    if x.values is not None:
        value_loss = token_mean(
            clipped_value_loss(x.values, x.old_values, x.returns, mask, cfg.value_clip), mask, **norm
        )
        loss = loss + value_loss
        stats["loss/value"] = value_loss.detach()
    return loss, stats


def as_float(stats: dict[str, Tensor]) -> dict[str, float]:
    """The statistics as Python floats (one device sync)."""
    if not stats:
        return {}
    values = torch.stack([v.detach().double().reshape(()) for v in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))
