"""Tests of rlft.algorithms.preference_losses against hand-computed numbers and float64 numpy
references written from the papers' equations."""

import math

import numpy as np
import pytest
import torch

from rlft.algorithms.preference_losses import (
    KTOInput,
    PreferenceInput,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    preference_metrics,
    simpo_loss,
)
from rlft.algorithms.registry import PREFERENCE_LOSSES, get_preference_loss
from rlft.config import AlgorithmConfig

UNPAIRED_PREFERENCE_LOSSES = {n for n in PREFERENCE_LOSSES if PREFERENCE_LOSSES.traits(n).unpaired}
REFERENCE_FREE_PREFERENCE_LOSSES = {
    n for n in PREFERENCE_LOSSES if PREFERENCE_LOSSES.traits(n).reference_free
}
PAIRED = sorted(set(PREFERENCE_LOSSES) - UNPAIRED_PREFERENCE_LOSSES)

# ---------------------------------------------------------------- numpy references (float64)


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def dpo_reference(pc, pr, rc, rr, beta, eps) -> np.ndarray:
    """DPO eq. 7, cDPO: -(1-ε) log σ(βh) - ε log σ(-βh)."""
    z = beta * ((pc - rc) - (pr - rr))
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def ipo_reference(pc, pr, rc, rr, beta) -> np.ndarray:
    """IPO eq. 17 with τ = β."""
    return ((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2


def hinge_reference(pc, pr, rc, rr, beta) -> np.ndarray:
    return np.maximum(0.0, 1 - beta * ((pc - rc) - (pr - rr)))


def simpo_reference(pc, pr, lc, lr, beta, gamma, eps) -> np.ndarray:
    """SimPO eq. 6 (+ label smoothing as in cDPO)."""
    z = beta / lc * pc - beta / lr * pr - gamma
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def orpo_reference(pc, pr, lc, lr, lam) -> np.ndarray:
    """ORPO eq. 6-7, literally: P = exp(mean log-prob), odds = P / (1 - P)."""
    p_w, p_l = np.exp(pc / lc), np.exp(pr / lr)
    odds_w, odds_l = p_w / (1 - p_w), p_l / (1 - p_l)
    l_or = -log_sigmoid(np.log(odds_w / odds_l))
    return -np.log(p_w) + lam * l_or


def kto_reference(logps, ref_logps, desirable, kl, beta, w_d, w_u) -> np.ndarray:
    """KTO: λ_y − v(x, y), v = λ_D σ(β(r − z0)) or λ_U σ(β(z0 − r)), z0 = max(kl, 0)."""
    z0 = max(kl, 0.0)
    out = np.empty_like(logps)
    for i, (p, r, d) in enumerate(zip(logps, ref_logps, desirable, strict=True)):
        reward = p - r
        if d:
            out[i] = w_d - w_d / (1 + math.exp(-beta * (reward - z0)))
        else:
            out[i] = w_u - w_u / (1 + math.exp(-beta * (z0 - reward)))
    return out


def paired_reference(name: str, d: dict[str, np.ndarray], cfg: AlgorithmConfig) -> np.ndarray:
    pc, pr, rc, rr, lc, lr = (d[k] for k in ("pc", "pr", "rc", "rr", "lc", "lr"))
    nll = -cfg.nll_coef * pc / lc
    if name == "sigmoid":
        return dpo_reference(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing) + nll
    if name == "ipo":
        return ipo_reference(pc, pr, rc, rr, cfg.beta) + nll
    if name == "hinge":
        return hinge_reference(pc, pr, rc, rr, cfg.beta) + nll
    if name == "simpo":
        return simpo_reference(pc, pr, lc, lr, cfg.beta, cfg.simpo_gamma, cfg.label_smoothing) + nll
    assert name == "orpo"
    return orpo_reference(pc, pr, lc, lr, cfg.orpo_lambda) + nll


def random_pairs(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Sum log-probs of completions of 1..40 tokens, per-token log-probs in [-3, -0.05]."""
    rng = np.random.default_rng(seed)
    lc, lr = rng.integers(1, 41, n), rng.integers(1, 41, n)
    pc, pr = -rng.uniform(0.05, 3.0, n) * lc, -rng.uniform(0.05, 3.0, n) * lr
    rc, rr = pc + rng.normal(0, 2, n), pr + rng.normal(0, 2, n)
    return {"pc": pc, "pr": pr, "rc": rc, "rr": rr, "lc": lc, "lr": lr}


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def to_input(d: dict[str, np.ndarray], requires_grad: bool = False) -> PreferenceInput:
    return PreferenceInput(
        chosen_logps=f64(d["pc"]).requires_grad_(requires_grad),
        rejected_logps=f64(d["pr"]).requires_grad_(requires_grad),
        chosen_lengths=torch.tensor(d["lc"]),  # long, as the learner counts tokens
        rejected_lengths=torch.tensor(d["lr"]),
        ref_chosen_logps=f64(d["rc"]),
        ref_rejected_logps=f64(d["rr"]),
    )


def pair(pc, pr, rc=None, rr=None, lc=1.0, lr=1.0) -> PreferenceInput:
    """A batch of one pair from plain numbers."""
    refs = (None, None) if rc is None else (f64([rc]), f64([rr]))
    return PreferenceInput(f64([pc]), f64([pr]), f64([lc]), f64([lr]), *refs)


# ---------------------------------------------------------------- registry


def test_registry_names_and_sets():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "ipo", "hinge", "simpo", "orpo", "kto"}
    assert get_preference_loss("sigmoid") is dpo_loss
    assert get_preference_loss("kto") is kto_loss
    assert {"kto"} == UNPAIRED_PREFERENCE_LOSSES  # registry traits
    assert {"simpo", "orpo"} == REFERENCE_FREE_PREFERENCE_LOSSES
    with pytest.raises(ValueError, match=r"algorithm\.preference_loss 'dpo2'.*sigmoid"):
        get_preference_loss("dpo2")


# ---------------------------------------------------------------- all paired losses


@pytest.mark.parametrize("nll_coef", [0.0, 0.3])
@pytest.mark.parametrize("name", PAIRED)
def test_paired_loss_matches_float64_reference(name, nll_coef):
    cfg = AlgorithmConfig(beta=0.3, label_smoothing=0.15, simpo_gamma=0.4, orpo_lambda=0.2, nll_coef=nll_coef)
    d = random_pairs(seed=PAIRED.index(name))
    losses, info = get_preference_loss(name)(to_input(d), cfg)
    assert losses.shape == (16,) and losses.dtype == torch.float64
    np.testing.assert_allclose(losses.numpy(), paired_reference(name, d, cfg), rtol=1e-10, atol=1e-12)
    assert set(info) == {"rewards/chosen", "rewards/rejected"}
    assert not any(v.requires_grad for v in info.values())


@pytest.mark.parametrize("name", PAIRED)
def test_gradient_sign_raising_chosen_lowers_loss(name):
    """Inside every loss's active region (|βh| < 1), d loss / d log π(y_w) < 0 < d loss / d log π(y_l)."""
    cfg = AlgorithmConfig(beta=0.1, nll_coef=0.0)
    d = random_pairs(seed=1)
    d["rr"] = d["pr"] - (d["pc"] - d["rc"]) + np.random.default_rng(2).uniform(-5, 5, 16)  # h in (-5, 5)
    data = to_input(d, requires_grad=True)
    losses, _ = get_preference_loss(name)(data, cfg)
    losses.sum().backward()
    assert (data.chosen_logps.grad < 0).all()
    assert (data.rejected_logps.grad > 0).all()


@pytest.mark.parametrize("name", sorted(set(PAIRED) - REFERENCE_FREE_PREFERENCE_LOSSES))
def test_missing_reference_raises(name):
    data = pair(-1.0, -2.0)
    with pytest.raises(ValueError, match=rf"algorithm\.preference_loss='{name}'.*reference"):
        get_preference_loss(name)(data, AlgorithmConfig(beta=0.1))


@pytest.mark.parametrize("name", sorted(REFERENCE_FREE_PREFERENCE_LOSSES))
def test_reference_free_losses_need_no_reference(name):
    losses, _ = get_preference_loss(name)(pair(-1.0, -2.0), AlgorithmConfig(beta=0.1))
    assert torch.isfinite(losses).all()


@pytest.mark.parametrize("name", PAIRED)
def test_nll_coef_adds_chosen_per_token_nll(name):
    d = random_pairs(seed=3)
    plain, _ = get_preference_loss(name)(to_input(d), AlgorithmConfig(beta=0.2, nll_coef=0.0))
    with_nll, _ = get_preference_loss(name)(to_input(d), AlgorithmConfig(beta=0.2, nll_coef=0.5))
    torch.testing.assert_close(with_nll - plain, torch.tensor(-0.5 * d["pc"] / d["lc"]))


# ---------------------------------------------------------------- DPO / cDPO


def test_dpo_starts_at_log2_with_a_fresh_reference():
    d = random_pairs(seed=4)
    d["rc"], d["rr"] = d["pc"], d["pr"]  # policy == reference, h = 0
    losses, info = dpo_loss(to_input(d), AlgorithmConfig(beta=0.1))
    torch.testing.assert_close(losses, torch.full((16,), math.log(2), dtype=torch.float64))
    assert preference_metrics(info) == {
        "rewards/chosen": 0.0,
        "rewards/rejected": 0.0,
        "rewards/accuracy": 0.0,
        "rewards/margin": 0.0,
    }


def test_dpo_hand_computed():
    # h = (-1 - -2) - (-3 - -2) = 2, βh = 1: loss = log(1 + e^-1); rewards β·log-ratio = ±0.5
    losses, info = dpo_loss(pair(-1.0, -3.0, -2.0, -2.0), AlgorithmConfig(beta=0.5))
    assert losses.item() == pytest.approx(0.31326168751822286)
    assert info["rewards/chosen"].item() == pytest.approx(0.5)
    assert info["rewards/rejected"].item() == pytest.approx(-0.5)
    # cDPO, ε = 0.1: 0.9·log(1 + e^-1) + 0.1·log(1 + e) = log(1 + e^-1) + 0.1·1
    cdpo, _ = dpo_loss(pair(-1.0, -3.0, -2.0, -2.0), AlgorithmConfig(beta=0.5, label_smoothing=0.1))
    assert cdpo.item() == pytest.approx(0.41326168751822286)


def test_label_smoothing_zero_is_plain_dpo():
    d = random_pairs(seed=5)
    losses, _ = dpo_loss(to_input(d), AlgorithmConfig(beta=0.2, label_smoothing=0.0))
    h = (d["pc"] - d["rc"]) - (d["pr"] - d["rr"])
    np.testing.assert_allclose(losses.numpy(), np.log1p(np.exp(-0.2 * h)), rtol=1e-12)


# ---------------------------------------------------------------- IPO


def test_ipo_minimum_at_half_inverse_beta():
    beta = 0.25  # target h* = 1 / (2β) = 2
    h = torch.linspace(-1.0, 5.0, 601, dtype=torch.float64).requires_grad_()
    zeros = torch.zeros_like(h)
    losses, _ = ipo_loss(
        PreferenceInput(h, zeros, zeros + 3, zeros + 3, zeros, zeros), AlgorithmConfig(beta=beta)
    )
    assert h[losses.argmin()].item() == pytest.approx(2.0)
    assert losses.min().item() == pytest.approx(0.0, abs=1e-24)
    losses.sum().backward()
    assert h.grad[losses.argmin()].item() == pytest.approx(0.0, abs=1e-12)
    # hand-computed: h = 5 is 3 past the target, loss 9; h = -1 is 3 short, loss 9
    assert losses[0].item() == losses[-1].item() == pytest.approx(9.0)


def test_ipo_uses_summed_not_length_averaged_logps():
    # same h = 2 with lengths 1 or 10: the loss does not change
    short, _ = ipo_loss(pair(-1.0, -3.0, -2.0, -2.0, 1.0, 1.0), AlgorithmConfig(beta=0.5))
    long, _ = ipo_loss(pair(-1.0, -3.0, -2.0, -2.0, 10.0, 10.0), AlgorithmConfig(beta=0.5))
    assert short.item() == long.item() == pytest.approx(1.0)  # (2 - 1)²


# ---------------------------------------------------------------- hinge (SLiC)


def test_hinge_zero_beyond_margin_and_linear_inside():
    beta = 0.5  # margin: βh >= 1 ⟺ h >= 2
    h = torch.tensor([-2.0, 0.0, 1.0, 2.0, 3.0, 10.0], dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros_like(h)
    losses, _ = hinge_loss(
        PreferenceInput(h, zeros, zeros + 1, zeros + 1, zeros, zeros), AlgorithmConfig(beta=beta)
    )
    torch.testing.assert_close(losses, torch.tensor([2.0, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64))
    losses.sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor([-0.5, -0.5, -0.5, 0.0, 0.0, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------- SimPO


def test_simpo_hand_computed():
    # means: -4/4 = -1 and -6/2 = -3; β = 2, γ = 1: z = -2 + 6 - 1 = 3, loss = log(1 + e^-3)
    cfg = AlgorithmConfig(beta=2.0, simpo_gamma=1.0)
    losses, info = simpo_loss(pair(-4.0, -6.0, lc=4.0, lr=2.0), cfg)
    assert losses.item() == pytest.approx(0.04858735157374196)
    assert info["rewards/chosen"].item() == pytest.approx(-2.0)
    assert info["rewards/rejected"].item() == pytest.approx(-6.0)


def test_simpo_is_length_normalised():
    cfg = AlgorithmConfig(beta=2.5, simpo_gamma=0.7)
    d = random_pairs(seed=6)
    doubled = {**d, "pc": 2 * d["pc"], "pr": 2 * d["pr"], "lc": 2 * d["lc"], "lr": 2 * d["lr"]}
    losses, info = simpo_loss(to_input(d), cfg)
    losses2, info2 = simpo_loss(to_input(doubled), cfg)
    torch.testing.assert_close(losses, losses2)
    torch.testing.assert_close(info["rewards/chosen"], info2["rewards/chosen"])


# ---------------------------------------------------------------- ORPO


def test_orpo_hand_computed():
    # P(y_w) = 0.5: odds 1; P(y_l) = 0.2: odds 1/4; L_OR = -log σ(log 4) = log 1.25;
    # L_SFT = -log 0.5; λ = 0.1
    cfg = AlgorithmConfig(orpo_lambda=0.1)
    losses, info = orpo_loss(pair(3 * math.log(0.5), 2 * math.log(0.2), lc=3.0, lr=2.0), cfg)
    assert losses.item() == pytest.approx(math.log(2) + 0.1 * math.log(1.25))
    assert info["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-12)
    assert info["rewards/rejected"].item() == pytest.approx(math.log(0.25))


def test_orpo_float32_accurate_near_zero_mean_logp():
    """log(1 - p) for p near 1 loses digits if computed naively in float32; log1mexp keeps them."""
    cfg = AlgorithmConfig(orpo_lambda=1.0)
    pc, pr = np.array([-1e-5, -3e-4, -0.5]), np.array([-2e-3, -1e-5, -2.0])
    lengths = np.ones(3)
    f32 = [torch.tensor(x, dtype=torch.float32) for x in (pc, pr, lengths, lengths)]
    losses, _ = orpo_loss(PreferenceInput(*f32), cfg)
    np.testing.assert_allclose(losses.numpy(), orpo_reference(pc, pr, lengths, lengths, 1.0), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_finite_when_mean_logp_is_zero(dtype):
    mean_logps = torch.tensor([0.0, -1e-12, -1e-8, -1e-6, 0.0], dtype=dtype)
    chosen = mean_logps.clone().requires_grad_()
    rejected = mean_logps.flip(0).clone().requires_grad_()
    ones = torch.ones(5, dtype=dtype)
    losses, info = orpo_loss(PreferenceInput(chosen, rejected, ones, ones), AlgorithmConfig(orpo_lambda=0.5))
    losses.sum().backward()
    for x in (losses, info["rewards/chosen"], chosen.grad, rejected.grad):
        assert torch.isfinite(x).all()


# ---------------------------------------------------------------- KTO


def kto_input(logps, ref_logps, desirable, kl, requires_grad=False) -> KTOInput:
    return KTOInput(
        f64(logps).requires_grad_(requires_grad), f64(ref_logps), torch.tensor(desirable), f64(kl)
    )


def test_kto_hand_computed_branches_and_weights():
    # r = 1.5, z0 = 0.5, β = 1: desirable λ_D·σ(-1), undesirable λ_U·σ(1)
    cfg = AlgorithmConfig(beta=1.0, kto_desirable_weight=2.0, kto_undesirable_weight=3.0)
    losses, info = kto_loss(kto_input([-1.0, -1.0], [-2.5, -2.5], [True, False], 0.5), cfg)
    torch.testing.assert_close(losses, f64([2 / (1 + math.e), 3 / (1 + math.exp(-1))]))
    torch.testing.assert_close(info["rewards"], torch.tensor([1.5, 1.5], dtype=torch.float64))
    assert losses[0].item() == pytest.approx(0.5378828427399902)
    assert losses[1].item() == pytest.approx(2.193175735890001)


def test_kto_clamps_negative_kl_at_zero_and_detaches_it():
    cfg = AlgorithmConfig(beta=1.0)
    clamped, _ = kto_loss(kto_input([-1.0, -1.0], [-1.0, -1.0], [True, False], -0.7), cfg)
    torch.testing.assert_close(clamped, torch.tensor([0.5, 0.5], dtype=torch.float64))  # σ(0)
    data = kto_input([-1.0, -2.0], [-1.5, -1.0], [True, False], 0.3, requires_grad=True)
    data.kl.requires_grad_()
    kto_loss(data, cfg)[0].sum().backward()
    assert data.kl.grad is None


def test_kto_matches_float64_reference_and_gradient_signs():
    rng = np.random.default_rng(7)
    logps = -rng.uniform(1, 60, 32)
    ref_logps = logps + rng.normal(0, 3, 32)
    desirable = rng.random(32) < 0.4
    cfg = AlgorithmConfig(beta=0.2, kto_desirable_weight=1.3, kto_undesirable_weight=0.8)
    for kl in (0.9, -0.4):
        data = kto_input(logps, ref_logps, desirable.tolist(), kl, requires_grad=True)
        losses, info = kto_loss(data, cfg)
        expected = kto_reference(logps, ref_logps, desirable, kl, 0.2, 1.3, 0.8)
        np.testing.assert_allclose(losses.detach().numpy(), expected, rtol=1e-12)
        np.testing.assert_allclose(info["rewards"].numpy(), 0.2 * (logps - ref_logps), rtol=1e-12)
        losses.sum().backward()
        assert (data.logps.grad[torch.tensor(desirable)] < 0).all()
        assert (data.logps.grad[~torch.tensor(desirable)] > 0).all()


# ---------------------------------------------------------------- metrics


def test_preference_metrics_hand_computed():
    info = {
        "rewards/chosen": torch.tensor([1.0, 0.0, 2.0, 1.0]),
        "rewards/rejected": torch.tensor([0.0, 1.0, 2.0, -1.0]),
    }
    assert preference_metrics(info) == {
        "rewards/chosen": 1.0,
        "rewards/rejected": 0.5,
        "rewards/accuracy": 0.5,  # ties do not count
        "rewards/margin": 0.5,
    }
