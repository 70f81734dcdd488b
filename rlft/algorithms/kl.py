"""Per-token estimators of KL(π || π_ref) from tokens sampled from π.

Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html. With
log r = log π_ref(x) − log π(x) and x ~ π: k1 = −log r (unbiased, high variance, can be negative),
k2 = ½(log r)² (biased, low variance), k3 = (r − 1) − log r (unbiased, low variance, always >= 0).
"""

import torch
from torch import Tensor

from rlft.algorithms.registry import register_kl


@register_kl("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log π − log π_ref (Schulman 2020): the naive unbiased estimator."""
    return logprobs - ref_logprobs


@register_kl("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ½ (log π − log π_ref)² (Schulman 2020): biased, low variance."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@register_kl("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = π_ref/π − log(π_ref/π) − 1 (Schulman 2020), the KL term of GRPO (DeepSeekMath, arXiv
    2402.03300, eq. 4): unbiased and >= 0.

    For numerical safety the log-ratio log π_ref − log π is clamped to [-20, 20] before exp (so
    tokens beyond that get no gradient), and computed as expm1(x) − x, which stays >= 0 in floating
    point where exp(x) − x − 1 can round below 0.
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return torch.expm1(log_ratio) - log_ratio


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon: int, n_samples: int) -> float:
    """One step of the adaptive KL controller of Ziegler et al. 2019 (arXiv 1909.08593), section 2.2.

    e = clip(KL_observed / KL_target − 1, −0.2, 0.2) and β ← β · (1 + e · n_samples / horizon):
    the coefficient grows while the policy drifts further than `target` (KL per sequence) from the
    reference and shrinks while it stays closer, by at most 20% per `horizon` samples. Written with
    K_β = n_samples / horizon, as in lm-human-preferences and TRL's AdaptiveKLController.
    """
    if target <= 0 or horizon <= 0:
        raise ValueError(f"algorithm.kl.target ({target}) and algorithm.kl.horizon ({horizon}) must be > 0")
    error = min(max(observed_kl / target - 1, -0.2), 0.2)
    return coef * (1 + error * n_samples / horizon)
