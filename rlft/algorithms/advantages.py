"""Advantage estimators: rewards (and critic values) -> per-token advantages and returns.

Every estimator is `fn(data: AdvantageInput, cfg: AlgorithmConfig) -> (advantages, returns)`, both
[N, T], exactly 0 outside the completion mask and never NaN. A NaN outcome reward means "no
opinion": the sample is left out of every baseline and statistic and its advantage is 0.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlft.algorithms.registry import register_advantage
from rlft.config import AlgorithmConfig

GROUP_STD_EPS = 1e-6
"""Added to the group std of GRPO, as the reference implementations do."""
WHITEN_EPS = 1e-8
"""Added to the variance in `masked_whiten`."""


@dataclass
class AdvantageInput:
    rewards: Tensor
    """[N] outcome reward per sample, NaN = "no opinion"."""
    group_ids: Tensor
    """[N] long; samples of one prompt share an id (any order, any values)."""
    mask: Tensor
    """[N, T] float, 1 on the completion tokens the model sampled (may be all 0). In a multi-turn
    episode it has gaps where the environment's messages sit; the estimators treat the model's
    tokens of a row as one sequence, in order, as if the gaps were not there."""
    token_rewards: Tensor | None = None
    """[N, T] per-token rewards (e.g. -coef * KL), 0 outside the mask."""
    values: Tensor | None = None
    """[N, T] critic values V(s_t) at completion tokens."""

    def __post_init__(self) -> None:
        n = self.rewards.shape[0]
        if self.rewards.dim() != 1 or self.group_ids.shape != (n,) or self.mask.dim() != 2:
            raise ValueError(
                f"rewards {tuple(self.rewards.shape)} and group_ids {tuple(self.group_ids.shape)} "
                f"must be [N] and mask {tuple(self.mask.shape)} [N, T]"
            )
        for name in ("mask", "token_rewards", "values"):
            x = getattr(self, name)
            if x is not None and x.shape != (n, self.mask.shape[1]):
                raise ValueError(f"{name} {tuple(x.shape)} must be [N, T] = {tuple(self.mask.shape)}")


# ---------------------------------------------------------------- helpers


@dataclass
class GroupStats:
    """Per-sample view of the statistics of each sample's group, over its valid (non-NaN) rewards."""

    valid: Tensor
    """[N] bool: the reward is not NaN."""
    count: Tensor
    """[N] number of valid rewards in the sample's group."""
    centered: Tensor
    """[N] r_i − group mean; exactly 0 for invalid samples and in groups without signal."""
    std: Tensor
    """[N] Bessel-corrected std of the group's valid rewards (0 for fewer than two)."""
    signal: Tensor
    """[N] bool: the group has two valid rewards that differ."""


def group_stats(rewards: Tensor, group_ids: Tensor) -> GroupStats:
    """Statistics of each sample's group, ignoring NaN rewards; groups may come in any order."""
    _, group = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group.max()) + 1 if len(group) else 0
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0)

    def per_group(values: Tensor, reduce: str = "sum") -> Tensor:
        out = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, group, values, reduce, include_self=False)[group]

    count = per_group(valid.to(r.dtype))
    mean = per_group(r) / count.clamp(min=1)
    # A constant group (which includes a single valid sample) gets exactly 0: `mean` can be off by
    # rounding, so compare max and min instead of trusting r - mean == 0. An all-NaN group has
    # max = -inf < min = +inf: no signal either.
    highest = per_group(rewards.masked_fill(~valid, -torch.inf), "amax")
    lowest = per_group(rewards.masked_fill(~valid, torch.inf), "amin")
    signal = highest > lowest
    centered = torch.where(valid & signal, r - mean, 0.0)
    std = (per_group(centered**2) / (count - 1).clamp(min=1)).sqrt()
    return GroupStats(valid=valid, count=count, centered=centered, std=std, signal=signal)


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask is 1, else 0 (also where x is NaN or inf outside the mask)."""
    return torch.where(mask.bool(), x, 0.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = WHITEN_EPS) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the entries where mask is 1; 0 outside the mask.

    The variance is the biased (population) one, 1/n Σ (x − mean)², as in the `whiten` of
    lm-human-preferences (Ziegler et al. 2019): it is defined for a single entry (0, so the output
    is 0 rather than NaN), and for the batch sizes of RL training the 1/(n−1) correction is
    immaterial. With `shift_mean=False` the mean is added back (only the scale changes), the
    convention for whitening rewards. An all-zero mask gives all zeros.
    """
    x, mask = _masked(x, mask), mask.to(x.dtype)
    count = mask.sum().clamp(min=1)
    mean = x.sum() / count
    var = ((x - mean) ** 2 * mask).sum() / count
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def discounted_cumsum(x: Tensor, discount: float) -> Tensor:
    """y_t = Σ_{k>=t} discount^(k−t) x_k along the last dim, i.e. y_t = x_t + discount · y_{t+1}."""
    running = torch.zeros_like(x[..., 0])
    out = []
    for t in reversed(range(x.shape[-1])):
        running = x[..., t] + discount * running
        out.append(running)
    return torch.stack(out[::-1], dim=-1)


def _last_token(mask: Tensor) -> Tensor:
    """[N, T] 1 on the last masked-in token of each row (after any gaps), else 0."""
    on = mask.bool()
    last = (torch.arange(mask.shape[1], device=mask.device) * on).argmax(-1, keepdim=True)
    return torch.zeros_like(mask).scatter(1, last, on.any(-1, keepdim=True).to(mask.dtype))


def _model_tokens_first(data: AdvantageInput) -> tuple[AdvantageInput, Tensor]:
    """``data`` with each row's masked-in tokens moved, in order, to its start (the rest after
    them), and the permutation used. Token-level recursions (returns-to-go, GAE's V(s_{t+1})) then
    step from one model token to the model's next one across an environment's message, whose
    tokens are no actions of the policy (a multi-turn episode's mask has gaps there)."""
    order = torch.argsort((~data.mask.bool()).to(torch.int8), dim=-1, stable=True)

    def moved(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.gather(1, order)

    return AdvantageInput(
        data.rewards, data.group_ids, moved(data.mask), moved(data.token_rewards), moved(data.values)
    ), order


def _back_in_place(x: Tensor, order: Tensor) -> Tensor:
    """Undo :func:`_model_tokens_first` on a per-token result."""
    return torch.zeros_like(x).scatter(1, order, x)


def _token_rewards(data: AdvantageInput, outcome: Tensor, mask: Tensor) -> Tensor:
    """r_t = token_rewards_t + (outcome on the last completion token)."""
    r = outcome[:, None] * _last_token(mask)
    return r if data.token_rewards is None else r + _masked(data.token_rewards, mask)


def _group_baseline(name: str, data: AdvantageInput) -> GroupStats:
    """Group statistics for the estimators that take the KL as a loss term, never as a reward."""
    if data.token_rewards is not None:
        raise ValueError(
            f"algorithm.advantage={name} takes the KL as a loss term, not as per-token rewards: "
            "set algorithm.kl.in_reward=false"
        )
    return group_stats(data.rewards, data.group_ids)


def _per_sequence(advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast sequence-level advantages over the completion tokens; returns = advantages."""
    a = advantages[:, None] * mask.to(advantages.dtype)
    return a, a


def _whitened_returns(
    data: AdvantageInput, outcome: Tensor, valid: Tensor, gamma: float
) -> tuple[Tensor, Tensor]:
    """REINFORCE++: returns-to-go of the per-token rewards, whitened over the batch's valid tokens."""
    mask = data.mask.to(outcome.dtype) * valid[:, None]
    returns = discounted_cumsum(_token_rewards(data, outcome, mask), gamma) * mask
    return masked_whiten(returns, mask), returns


# ---------------------------------------------------------------- group baselines


@register_advantage("grpo")
def grpo_advantages(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """Group-relative advantages of GRPO.

    DeepSeekMath (Shao et al. 2024, arXiv 2402.03300), section 4.1.2, outcome supervision: every
    completion token of sample i gets Â_{i,t} = (r_i − mean(r)) / std(r), with mean and std over
    the G samples of the same prompt. The std is Bessel-corrected, plus 1e-6, as in the reference
    implementations. `cfg.norm_adv_by_std=False` drops the division (the same as `dr_grpo`).

    Samples with a NaN reward are left out of their group's mean and std and get 0; groups with
    fewer than two valid samples or with equal rewards get exactly 0. Returns = advantages.
    """
    stats = _group_baseline("grpo", data)
    adv = stats.centered
    if cfg.norm_adv_by_std:
        adv = adv / torch.where(stats.std > 0, stats.std + GROUP_STD_EPS, 1.0)  # std 0 -> centered 0
    return _per_sequence(adv, data.mask)


@register_advantage("dr_grpo")
def dr_grpo_advantages(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """Dr. GRPO advantages: Â_{i,t} = r_i − mean(r) over the prompt's group, never divided by std.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (arXiv
    2503.20783), section 3.1: the std division of GRPO weights too easy and too hard prompts up
    (a "question-level difficulty bias"), so it is removed whatever `cfg.norm_adv_by_std` says.
    NaN rewards and groups without signal as in `grpo`. Returns = advantages.
    """
    return _per_sequence(_group_baseline("dr_grpo", data).centered, data.mask)


@register_advantage("rloo")
def rloo_advantages(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """REINFORCE Leave-One-Out: Â_i = r_i − 1/(k−1) Σ_{j≠i} r_j over the k valid samples of the group.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
    from Human Feedback in LLMs" (arXiv 2402.14740), after Kool et al. 2019: each sample's
    baseline is the mean reward of the other samples of its prompt, which keeps the
    estimator unbiased. Computed as k/(k−1) · (r_i − mean(r)), the same number. A sample alone
    in its group (or with only NaN neighbours) gets 0, as does a NaN-reward sample.
    With `algorithm.kl.in_reward` the per-token penalties are summed into the sequence reward
    first, r(x, y) − β·KL(x, y), as in the paper's RLHF objective (section 3). Returns = advantages.
    """
    rewards = data.rewards
    if data.token_rewards is not None:
        rewards = rewards + _masked(data.token_rewards, data.mask).sum(-1)
    stats = group_stats(rewards, data.group_ids)
    return _per_sequence(stats.centered * stats.count / (stats.count - 1).clamp(min=1), data.mask)


# ---------------------------------------------------------------- REINFORCE++


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """REINFORCE++: discounted return-to-go, normalised over the whole batch.

    Hu et al. 2025, "REINFORCE++" (arXiv 2501.03262): per-token rewards
    r_t = 1[t = last token] · r(x, y) + token_rewards_t (the KL penalty −β·KL_t when
    `algorithm.kl.in_reward`), return G_t = Σ_{k>=t} γ^{k−t} r_k, and the advantage is G
    whitened over all valid completion tokens of the batch ("global batch normalisation",
    mean and std as in `masked_whiten`). No group baseline and no critic.

    Returns G (not whitened). NaN-reward samples are left out of the statistics and get 0.
    """
    valid = ~torch.isnan(data.rewards)
    moved, order = _model_tokens_first(data)
    advantages, returns = _whitened_returns(moved, torch.where(valid, data.rewards, 0.0), valid, cfg.gamma)
    return _back_in_place(advantages, order), _back_in_place(returns, order)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """REINFORCE++ with a group baseline ("REINFORCE++-baseline", for k > 1 samples per prompt).

    Hu et al. 2025 (arXiv 2501.03262), "REINFORCE++ w/ baseline", and verl's
    `reinforce_plus_plus_baseline`: the outcome reward minus its group mean, r_i − mean(r),
    replaces r(x, y) on the last token;
    then as `reinforce_pp`: add `token_rewards`, take the γ-discounted return-to-go and whiten
    it over all valid tokens of the batch. Group means ignore NaN rewards (those samples get 0);
    a constant group contributes a centred reward of exactly 0.
    """
    stats = group_stats(data.rewards, data.group_ids)
    moved, order = _model_tokens_first(data)
    advantages, returns = _whitened_returns(moved, stats.centered, stats.valid, cfg.gamma)
    return _back_in_place(advantages, order), _back_in_place(returns, order)


# ---------------------------------------------------------------- PPO with a critic


@register_advantage("gae")
def gae_advantages(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation for PPO with a critic.

    Schulman et al. 2016 (arXiv 1506.02438), eq. 16: Â_t = Σ_{l>=0} (γλ)^l δ_{t+l} with
    δ_t = r_t + γ V(s_{t+1}) − V(s_t), where V after the last completion token is 0 (the episode
    ends) and r_t = token_rewards_t + the outcome reward on the last completion token (the RLHF
    reward of Ziegler et al. 2019 / Ouyang et al. 2022). With γ = λ = 1, Â_t = Σ_{k>=t} r_k − V_t.

    `cfg.whiten_rewards` first rescales r over the batch's valid tokens (`masked_whiten` with
    shift_mean=False); the returns R_t = Â_t + V_t are the critic's targets (before any advantage
    whitening); `cfg.whiten_advantages` then whitens Â over the valid tokens. A NaN-reward sample
    gets Â = 0 and R = V (the critic is told nothing new) and is left out of the statistics.
    In a multi-turn episode s_{t+1} is the state before the model's next token: the recursion
    skips the environment's tokens (values are read and trained on model tokens only).
    """
    if data.values is None:
        raise ValueError(
            "algorithm.advantage=gae needs critic values; load a critic or choose another "
            "algorithm.advantage (grpo, rloo, reinforce_pp, ...)"
        )
    moved, order = _model_tokens_first(data)
    advantages, returns = _gae(moved, cfg)
    return _back_in_place(advantages, order), _back_in_place(returns, order)


def _gae(data: AdvantageInput, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """GAE over rows whose masked-in tokens are contiguous."""
    valid = ~torch.isnan(data.rewards)
    mask = data.mask.to(data.values.dtype)
    live = mask * valid[:, None]
    values = _masked(data.values, mask)
    rewards = _token_rewards(data, torch.where(valid, data.rewards, 0.0), live)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, live, shift_mean=False)
    next_values = F.pad(values[:, 1:], (0, 1))
    deltas = (rewards + cfg.gamma * next_values - values) * live
    advantages = discounted_cumsum(deltas, cfg.gamma * cfg.lam) * live
    returns = advantages + values
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, live)
    return advantages, returns
