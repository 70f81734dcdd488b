"""Offline preference losses: the DPO family on chosen/rejected pairs, and KTO on unpaired data.

All of them work on sequence log-probs, log π(y|x) = the sum over the completion's tokens of the
token log-probs, and return one loss per example (the caller averages) with detached implicit
rewards for metrics. Notation: for a pair (y_w chosen, y_l rejected) with reference log-probs,
    h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)),
and the implicit reward of the DPO family is β·(log π(y) − log π_ref(y)) (DPO, arXiv 2305.18290,
section 5). β is `algorithm.beta`.

Every paired loss also adds `algorithm.nll_coef` × the chosen completion's per-token negative
log-likelihood (see `_plus_chosen_nll`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from rlft.algorithms.registry import PREFERENCE_LOSSES, register_preference_loss

if TYPE_CHECKING:
    from rlft.config import AlgorithmConfig


@dataclass
class PreferenceInput:
    """Sequence log-probs of a batch of B (prompt, chosen, rejected) triples."""

    chosen_logps: Tensor
    """[B] sum over completion tokens of the policy's log-probs for the chosen response."""
    rejected_logps: Tensor
    """[B] same for the rejected response."""
    chosen_lengths: Tensor
    """[B] number of completion tokens of the chosen response (float or long)."""
    rejected_lengths: Tensor
    """[B] same for the rejected response."""
    ref_chosen_logps: Tensor | None = None
    """[B] the reference model's sum log-probs of the chosen response; None for reference-free losses."""
    ref_rejected_logps: Tensor | None = None
    """[B] same for the rejected response."""


@dataclass
class KTOInput:
    """Sequence log-probs of B unpaired completions, each labelled desirable or undesirable."""

    logps: Tensor
    """[B] policy sum log-probs of each completion."""
    ref_logps: Tensor
    """[B] reference sum log-probs of each completion."""
    desirable: Tensor
    """[B] bool: True for desirable, False for undesirable completions."""
    kl: Tensor
    """Scalar estimate of KL(π || π_ref): the mean of log π − log π_ref over mismatched
    (prompt, completion) pairs of the batch. `kto_loss` detaches it and clamps it at 0."""


def _log_ratios(data: PreferenceInput, loss_name: str) -> tuple[Tensor, Tensor]:
    """log π − log π_ref of the chosen and of the rejected responses."""
    if data.ref_chosen_logps is None or data.ref_rejected_logps is None:
        raise ValueError(
            f"algorithm.preference_loss={loss_name!r} needs reference log-probs (ref_chosen_logps, "
            f"ref_rejected_logps); the reference-free losses are {_reference_free()}"
        )
    return data.chosen_logps - data.ref_chosen_logps, data.rejected_logps - data.ref_rejected_logps


def _reference_free() -> list[str]:
    return sorted(name for name in PREFERENCE_LOSSES if PREFERENCE_LOSSES.traits(name).reference_free)


def _mean_logps(logps: Tensor, lengths: Tensor) -> Tensor:
    """Per-token average log-prob, log π(y) / |y| (a length of 0 counts as 1, giving 0)."""
    return logps / lengths.to(logps.dtype).clamp(min=1)


def _rewards(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    return {"rewards/chosen": chosen.detach(), "rewards/rejected": rejected.detach()}


def _smoothed_logistic_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """−(1 − ε) log σ(z) − ε log σ(−z): the logistic loss when each label is flipped with
    probability ε (conservative DPO, Mitchell 2023, "A note on DPO with noisy preferences & relationship
    to IPO", https://ericmitchell.ai/cdpo.pdf). ε = 0 is the plain −log σ(z)."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _plus_chosen_nll(losses: Tensor, data: PreferenceInput, cfg: AlgorithmConfig) -> Tensor:
    """losses + nll_coef · (−log π(y_w) / |y_w|), the per-token NLL of the chosen completion.

    The DPO+NLL loss of Iterative RPO (Pang et al. 2024, arXiv 2404.19733), with the weight on the
    NLL term (as TRL's `rpo_alpha`) rather than on the DPO term as in the paper, and
    the NLL normalised by the completion's length only (the prompt is not trained on).
    """
    if cfg.nll_coef == 0:
        return losses
    return losses - cfg.nll_coef * _mean_logps(data.chosen_logps, data.chosen_lengths)


@register_preference_loss("sigmoid")
def dpo_loss(data: PreferenceInput, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290), eq. 7: L = −log σ(β h).

    With `label_smoothing` ε > 0 it is conservative DPO (cDPO, Mitchell 2023):
    L = −(1 − ε) log σ(β h) − ε log σ(−β h), the expected DPO loss when labels are flipped with
    probability ε. With policy = reference (h = 0) the loss is log 2.

    Returns per-pair losses [B] and rewards β·(log π − log π_ref) of the chosen and rejected responses.
    """
    chosen, rejected = _log_ratios(data, "sigmoid")
    losses = _smoothed_logistic_loss(cfg.beta * (chosen - rejected), cfg.label_smoothing)
    return _plus_chosen_nll(losses, data, cfg), _rewards(cfg.beta * chosen, cfg.beta * rejected)


@register_preference_loss("ipo")
def ipo_loss(data: PreferenceInput, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO (Azar et al. 2023, arXiv 2310.12036), eq. 17: L = (h − 1/(2τ))², with τ = β.

    A squared loss that regresses h onto the fixed target 1/(2β) instead of pushing it to infinity.
    h is built from summed sequence log-probs, as in the paper's eq. 17; TRL (and others) use
    length-averaged log-probs for IPO instead, which changes the scale of h, so β values do not
    transfer between the two.

    Returns per-pair losses [B] and rewards β·(log π − log π_ref) of the chosen and rejected responses.
    """
    chosen, rejected = _log_ratios(data, "ipo")
    losses = (chosen - rejected - 1 / (2 * cfg.beta)) ** 2
    return _plus_chosen_nll(losses, data, cfg), _rewards(cfg.beta * chosen, cfg.beta * rejected)


@register_preference_loss("hinge")
def hinge_loss(data: PreferenceInput, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """SLiC hinge loss: L = max(0, 1 − β h).

    The rank-calibration loss of SLiC-HF (Zhao et al. 2023, arXiv 2305.10425, eq. 1),
    max(0, δ − log π(y_w) + log π(y_l)), with the log-probs normalised by the reference model as in
    RSO's "hinge-norm" (Liu et al. 2023, arXiv 2309.06657) and TRL's `hinge`; it equals
    β·max(0, δ − h) with margin δ = 1/β. SLiC-HF's regularisation term on a reference target is
    not included (use `nll_coef` for an NLL term on the chosen completion). Pairs beyond the margin
    (β h >= 1) get zero loss and zero gradient.

    Returns per-pair losses [B] and rewards β·(log π − log π_ref) of the chosen and rejected responses.
    """
    chosen, rejected = _log_ratios(data, "hinge")
    losses = torch.relu(1 - cfg.beta * (chosen - rejected))
    return _plus_chosen_nll(losses, data, cfg), _rewards(cfg.beta * chosen, cfg.beta * rejected)


@register_preference_loss("simpo", reference_free=True)
def simpo_loss(data: PreferenceInput, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO (Meng et al. 2024, arXiv 2405.14734), eq. 6, reference-free and length-normalised:
    L = −log σ(β/|y_w| · log π(y_w) − β/|y_l| · log π(y_l) − γ), with γ = `simpo_gamma`.

    γ is the absolute target margin of eq. 6 (the SimPO code configures γ/β instead).
    `label_smoothing` ε applies as in cDPO, as the SimPO code supports.

    Returns per-pair losses [B] and rewards β·log π(y)/|y| (eq. 4) of the chosen and rejected responses.
    """
    chosen = cfg.beta * _mean_logps(data.chosen_logps, data.chosen_lengths)
    rejected = cfg.beta * _mean_logps(data.rejected_logps, data.rejected_lengths)
    losses = _smoothed_logistic_loss(chosen - rejected - cfg.simpo_gamma, cfg.label_smoothing)
    return _plus_chosen_nll(losses, data, cfg), _rewards(chosen, rejected)


def _log_odds(mean_logps: Tensor) -> Tensor:
    """log(p / (1 − p)) for p = exp(mean_logps) <= 1, computed stably as x − log(1 − eˣ).

    log(1 − eˣ) uses log(−expm1(x)) for x > −log 2 and log1p(−eˣ) below (Mächler 2012,
    "Accurately computing log(1 − exp(−|a|))"). x is clamped to at most −eps of its dtype: an
    average log-prob of 0 (p rounds to 1) would give infinite odds; beyond the clamp it gets no
    gradient from the odds (log-odds <= about 16 in float32, 36 in float64).
    """
    x = mean_logps.clamp(max=-torch.finfo(mean_logps.dtype).eps)
    log1mexp = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return x - log1mexp


@register_preference_loss("orpo", reference_free=True)
def orpo_loss(data: PreferenceInput, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO (Hong et al. 2024, arXiv 2403.07691), eq. 6-7, reference-free:
    L = L_SFT + λ·L_OR,  L_OR = −log σ(log odds(y_w) − log odds(y_l)),  λ = `orpo_lambda`,
    with odds(y) = P(y) / (1 − P(y)) of the length-normalised likelihood P(y) = exp(log π(y)/|y|)
    (see `_log_odds` for the numerics), and L_SFT = −log π(y_w)/|y_w|, the chosen completion's
    per-token NLL. β is not used. The paper's and TRL's L_SFT is a token mean over the whole batch;
    here it is per pair, so the caller's mean over pairs weighs each pair equally.

    Returns per-pair losses [B] and, as rewards, the log-odds of the chosen and rejected responses,
    so the reward margin is the log odds ratio inside L_OR (TRL reports λ·log π(y)/|y| instead;
    both order the pair the same way, so reward accuracy agrees).
    """
    chosen_mean = _mean_logps(data.chosen_logps, data.chosen_lengths)
    chosen_log_odds = _log_odds(chosen_mean)
    rejected_log_odds = _log_odds(_mean_logps(data.rejected_logps, data.rejected_lengths))
    odds_ratio_loss = -F.logsigmoid(chosen_log_odds - rejected_log_odds)
    losses = -chosen_mean + cfg.orpo_lambda * odds_ratio_loss
    return _plus_chosen_nll(losses, data, cfg), _rewards(chosen_log_odds, rejected_log_odds)


@register_preference_loss("kto", unpaired=True)
def kto_loss(data: KTOInput, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306), the KTO loss of section 4, eq. 8-9
    (TRL's comments number it eq. 7),
    L = λ_y − v(x, y) per example, as implemented in the authors' HALOs code and TRL:
        r = log π(y) − log π_ref(y),   z₀ = max(KL estimate, 0), detached,
        desirable:    λ_D − λ_D σ(β (r − z₀)) = λ_D σ(β (z₀ − r))
        undesirable:  λ_U − λ_U σ(β (z₀ − r)) = λ_U σ(β (r − z₀))
    with λ_D = `kto_desirable_weight`, λ_U = `kto_undesirable_weight` (the paper suggests
    λ_D n_D / (λ_U n_U) in [1, 4/3] for n_D desirable and n_U undesirable examples).
    `label_smoothing` and `nll_coef` are not used.

    Returns per-example losses [B] and rewards β·r [B].
    """
    z0 = data.kl.detach().clamp(min=0)
    log_ratios = data.logps - data.ref_logps
    losses = torch.where(
        data.desirable.bool(),
        cfg.kto_desirable_weight * torch.sigmoid(cfg.beta * (z0 - log_ratios)),
        cfg.kto_undesirable_weight * torch.sigmoid(cfg.beta * (log_ratios - z0)),
    )
    return losses, {"rewards": (cfg.beta * log_ratios).detach()}


def preference_metrics(info: dict[str, Tensor]) -> dict[str, float]:
    """Batch means of a paired loss's info: rewards/chosen, rewards/rejected, rewards/accuracy
    (fraction of pairs whose chosen reward is strictly greater) and rewards/margin (chosen − rejected)."""
    chosen, rejected = info["rewards/chosen"].double(), info["rewards/rejected"].double()
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracy": (chosen > rejected).double().mean().item(),
        "rewards/margin": (chosen - rejected).mean().item(),
    }
