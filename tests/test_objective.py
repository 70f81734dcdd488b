"""rlft.algorithms.objective.rl_objective on hand-made tensors: PPO-clip + truncated IS weights + k3
KL as a loss term + entropy bonus, and the critic's clipped value loss, against numbers computed
by hand from the papers' equations (per token, with math.exp)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from rlft.algorithms import LossCounts, ObjectiveInput, rl_objective
from rlft.config import AlgorithmConfig, KLConfig

MASK = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
LOGPROBS = [[-1.0, -0.5, 0.0], [-2.0, -0.3, -1.2]]
OLD = [[-1.1, -0.5, 0.0], [-1.5, -0.3, -1.0]]
SAMPLER = [[-1.0, -0.9, 0.0], [-1.5, -0.3, -1.5]]
REF = [[-1.2, -0.4, 0.0], [-2.0, -0.5, -1.0]]
ADV = [[1.0, 1.0, 0.0], [-0.5, -0.5, -0.5]]
ENTROPY = [[2.0, 1.0, 9.0], [0.5, 1.5, 1.0]]
TOKENS = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]  # the unmasked ones
CFG = AlgorithmConfig(
    clip_low=0.2, clip_high=0.2, tis_cap=1.5, entropy_coef=0.01, kl=KLConfig(estimator="k3")
)
KL_COEF = 0.1
COUNTS = LossCounts(num_tokens=5, num_seqs=2, horizon=8)


def _inputs(**changes: object) -> ObjectiveInput:
    x = ObjectiveInput(
        logprobs=torch.tensor(LOGPROBS, dtype=torch.float64, requires_grad=True),
        mask=torch.tensor(MASK, dtype=torch.float64),
        advantages=torch.tensor(ADV, dtype=torch.float64),
        sampler_logprobs=torch.tensor(SAMPLER, dtype=torch.float64),
        old_logprobs=torch.tensor(OLD, dtype=torch.float64),
        ref_logprobs=torch.tensor(REF, dtype=torch.float64),
        entropy=torch.tensor(ENTROPY, dtype=torch.float64, requires_grad=True),
    )
    return replace(x, **changes)


def _by_hand(i: int, t: int) -> dict[str, float]:
    """Token (i, t)'s terms: PPO eq. 7 with TIS weight, k3 (Schulman 2020) and its derivatives."""
    lp, old, a = LOGPROBS[i][t], OLD[i][t], ADV[i][t]
    ratio = math.exp(lp - old)
    clipped_ratio = min(max(ratio, 0.8), 1.2)
    clipped = clipped_ratio * a < ratio * a
    weight = min(math.exp(old - SAMPLER[i][t]), 1.5)
    x = REF[i][t] - lp
    return {
        "policy": -min(ratio * a, clipped_ratio * a) * weight,
        # d/d lp of the weighted PPO term: -w * ratio * A where the unclipped branch is active
        "policy_grad": 0.0 if clipped else -weight * ratio * a,
        "clipped": float(clipped),
        "k3": math.exp(x) - x - 1,
        "k3_grad": 1 - math.exp(x),
        "entropy": ENTROPY[i][t],
        "sampler_diff": abs(lp - SAMPLER[i][t]),
    }


def test_ppo_clip_tis_k3_entropy_match_the_hand_computation() -> None:
    x = _inputs()
    loss, stats = rl_objective(x, CFG, KL_COEF, COUNTS)
    terms = [_by_hand(i, t) for i, t in TOKENS]
    policy = sum(term["policy"] for term in terms) / 5
    kl = sum(term["k3"] for term in terms) / 5
    entropy = sum(term["entropy"] for term in terms) / 5
    assert [term["clipped"] for term in terms] == [0, 0, 1, 0, 0]  # token (1, 0): ratio 0.61 < 0.8, A < 0
    assert [term["policy"] < 0 for term in terms] == [True, True, False, False, False]
    assert loss.item() == pytest.approx(policy + KL_COEF * kl - 0.01 * entropy, abs=1e-12)
    assert stats["loss/policy"].item() == pytest.approx(policy, abs=1e-12)
    assert stats["kl"].item() == pytest.approx(kl, abs=1e-12)
    assert stats["kl/seq"].item() == pytest.approx(kl * 5 / 2, abs=1e-12)
    assert stats["entropy"].item() == pytest.approx(entropy, abs=1e-12)
    assert stats["clip_frac"].item() == pytest.approx(0.2, abs=1e-12)
    diff = sum(term["sampler_diff"] for term in terms) / 5
    assert stats["logprob_diff/sampler"].item() == pytest.approx(diff, abs=1e-12)
    assert "loss/value" not in stats

    loss.backward()
    expected = torch.zeros(2, 3, dtype=torch.float64)
    entropy_grad = torch.zeros(2, 3, dtype=torch.float64)
    for (i, t), term in zip(TOKENS, terms, strict=True):
        expected[i, t] = (term["policy_grad"] + KL_COEF * term["k3_grad"]) / 5
        entropy_grad[i, t] = -0.01 / 5
    assert torch.allclose(x.logprobs.grad, expected, atol=1e-12)
    assert x.logprobs.grad[1, 0] == pytest.approx(KL_COEF * _by_hand(1, 0)["k3_grad"] / 5)  # clipped: KL only
    assert torch.allclose(x.entropy.grad, entropy_grad, atol=1e-12)


def test_switches_drop_their_terms() -> None:
    """tis_cap=0: no weights; kl.in_reward: KL reported but not in the loss; entropy_coef=0: no
    bonus; no old log-probs: ratio 1 everywhere (the first update on fresh samples)."""
    cfg = replace(CFG, tis_cap=0.0, entropy_coef=0.0, kl=KLConfig(estimator="k3", in_reward=True))
    loss, stats = rl_objective(_inputs(old_logprobs=None), cfg, KL_COEF, COUNTS)
    by_token = [-ADV[i][t] for i, t in TOKENS]  # ratio 1: nothing clipped, -A per token
    assert loss.item() == pytest.approx(sum(by_token) / 5, abs=1e-12)
    assert stats["clip_frac"].item() == 0 and stats["kl"].item() > 0
    _, stats = rl_objective(_inputs(ref_logprobs=None, entropy=None), CFG, KL_COEF, COUNTS)
    assert "kl" not in stats and "entropy" not in stats


def test_aggregation_uses_the_mini_batch_counts() -> None:
    """Micro-batch losses divided by the mini-batch's counts sum to the mini-batch loss."""
    whole, _ = rl_objective(_inputs(), CFG, KL_COEF, COUNTS)
    parts = 0.0
    for row in (0, 1):
        x = _inputs()
        part = ObjectiveInput(
            **{
                name: None if value is None else value.detach()[row : row + 1]
                for name, value in vars(x).items()
            }
        )
        parts += rl_objective(part, CFG, KL_COEF, COUNTS)[0].item()
    assert parts == pytest.approx(whole.item(), abs=1e-12)


def test_critic_loss_is_the_clipped_value_loss() -> None:
    """½ max((V − R)², (V_old + clip(V − V_old, ±0.2) − R)²), token mean, added to the loss."""
    values = [[0.5, 1.0, 7.0], [0.0, -1.0, 2.0]]
    old_values = [[0.2, 1.1, 0.0], [0.0, -0.5, 1.0]]
    returns = [[1.0, 0.0, 0.0], [0.3, -1.0, 1.0]]
    x = _inputs(
        values=torch.tensor(values, dtype=torch.float64, requires_grad=True),
        old_values=torch.tensor(old_values, dtype=torch.float64),
        returns=torch.tensor(returns, dtype=torch.float64),
    )
    loss, stats = rl_objective(x, CFG, KL_COEF, COUNTS)
    by_hand = 0.0
    for i, t in TOKENS:
        v, old, r = values[i][t], old_values[i][t], returns[i][t]
        clipped = old + min(max(v - old, -0.2), 0.2)
        by_hand += 0.5 * max((v - r) ** 2, (clipped - r) ** 2) / 5
    assert stats["loss/value"].item() == pytest.approx(by_hand, abs=1e-12)
    without, _ = rl_objective(_inputs(), CFG, KL_COEF, COUNTS)
    assert loss.item() == pytest.approx(without.item() + by_hand, abs=1e-12)
