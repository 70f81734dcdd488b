"""Tests of rlft.algorithms' policy losses, aggregations, KL, value loss and registries against
hand-computed numbers and float64 numpy references written from the papers' equations.
(Advantage estimators and DAPO pieces: tests/test_algorithms_advantages.py.)"""

import math

import numpy as np
import pytest
import torch

from rlft.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    adaptive_kl_coef,
    clipped_value_loss,
    dual_clip_loss,
    get_advantage,
    get_kl,
    get_loss_agg,
    get_policy_loss,
    grpo_advantages,
    gspo_loss,
    kl_k1,
    kl_k2,
    kl_k3,
    ppo_clip_loss,
    reinforce_loss,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
    truncated_is_weights,
)
from rlft.config import AlgorithmConfig

HORIZON = 16  # the "max completion length" given to seq_mean_token_sum_norm
AGGREGATIONS = [token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm]
LOSSES = [ppo_clip_loss, dual_clip_loss, gspo_loss, reinforce_loss]

# ---------------------------------------------------------------- numpy references (float64)


def ppo_reference(logprobs, old_logprobs, advantages, mask, clip_low, clip_high) -> np.ndarray:
    ratio, a = np.exp(logprobs - old_logprobs), advantages
    loss = -np.minimum(ratio * a, np.clip(ratio, 1 - clip_low, 1 + clip_high) * a)
    return np.where(mask, loss, 0.0)


def dual_clip_reference(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, c) -> np.ndarray:
    loss = ppo_reference(logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
    return np.where(mask & (advantages < 0), np.minimum(loss, -c * advantages), loss)


def gspo_reference(logprobs, old_logprobs, advantages, mask, clip_low, clip_high) -> np.ndarray:
    loss = np.zeros_like(logprobs)
    for i, m in enumerate(mask):
        if m.any():
            s = np.exp(np.mean(logprobs[i, m] - old_logprobs[i, m]))
            a = advantages[i, m]
            loss[i, m] = -np.minimum(s * a, np.clip(s, 1 - clip_low, 1 + clip_high) * a)
    return loss


def reference_aggregation(name: str, per_token: np.ndarray, mask: np.ndarray) -> float:
    rows = [row[m] for row, m in zip(per_token, mask, strict=True)]
    n = len(rows)
    if name == "token_mean":
        return sum(r.sum() for r in rows) / sum(len(r) for r in rows)
    if name == "seq_mean_token_mean":
        return sum(r.mean() for r in rows if len(r)) / n
    if name == "seq_mean_token_sum":
        return sum(r.sum() for r in rows) / n
    return sum(r.sum() for r in rows) / (n * HORIZON)


def random_batch(n: int = 8, t: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 policy/old logprobs, per-token advantages (a sequence value plus noise) and a mask
    with a prompt prefix, right padding, one all-masked row and one single-token row."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    logp = old + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.3  # some ratios clip
    start = torch.randint(0, 3, (n,), generator=g)
    length = torch.randint(1, t - 2, (n,), generator=g)
    length[0], length[1] = 0, 1
    pos = torch.arange(t)[None, :]
    mask = (pos >= start[:, None]) & (pos < (start + length)[:, None])
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        n, t, generator=g, dtype=torch.float64
    )
    return {"logprobs": logp, "old_logprobs": old, "advantages": adv, "mask": mask}


def cfg(**overrides) -> AlgorithmConfig:
    return AlgorithmConfig(**overrides)


def per_token_logprob(ratios: list[float]) -> torch.Tensor:
    """[len, 1] log-probs whose ratio to old log-probs of 0 are `ratios`, one token per row."""
    return torch.tensor(ratios, dtype=torch.float64).log()[:, None]


# ---------------------------------------------------------------- PPO clip


def test_ppo_clip_hand_computed():
    # one token per case: ratio inside / above / below [0.8, 1.2], with A = +2 and A = -2
    ratios = [1.1, 1.5, 0.5, 1.1, 1.5, 0.5]
    logp = per_token_logprob(ratios)
    adv = torch.tensor([[2.0], [2.0], [2.0], [-2.0], [-2.0], [-2.0]], dtype=torch.float64)
    loss, info = ppo_clip_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(logp), cfg())
    # A>0: -min(rA, clip(r)A) -> inside -2.2, above clipped to -2.4, below -1.0 (unclipped is smaller)
    # A<0: inside 2.2, above 3.0 (unclipped is smaller), below clipped to 1.6
    expected = torch.tensor([-2.2, -2.4, -1.0, 2.2, 3.0, 1.6], dtype=torch.float64)
    torch.testing.assert_close(loss[:, 0], expected)
    assert info["clipped"][:, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    torch.testing.assert_close(info["ratio"][:, 0], torch.tensor(ratios, dtype=torch.float64))


def test_ppo_clip_asymmetric_dapo_bounds():
    logp = per_token_logprob([1.25, 0.85, 1.3])
    adv = torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64)
    loss, info = ppo_clip_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(logp), cfg(clip_high=0.28))
    torch.testing.assert_close(loss[:, 0], torch.tensor([-1.25, 0.85, -1.28], dtype=torch.float64))
    assert info["clipped"][:, 0].tolist() == [0.0, 0.0, 1.0]  # only 1.3 is past 1 + 0.28


def test_ppo_clip_matches_numpy():
    b = random_batch()
    loss, info = ppo_clip_loss(**b, cfg=cfg(clip_low=0.2, clip_high=0.28))
    np_b = {k: v.numpy() for k, v in b.items()}
    expected = ppo_reference(**np_b, clip_low=0.2, clip_high=0.28)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert 0 < info["clipped"].sum() < b["mask"].sum()  # the batch exercises both branches


# ---------------------------------------------------------------- dual clip


def test_dual_clip_caps_negative_advantages():
    # ratio 5 with A = -1: PPO loss 5 (unbounded in the ratio) is capped at c·|A| = 3.
    # ratio 2 with A = -1: 2 < 3, unchanged. ratio 5 with A = +1: clipped to -1.2 as in PPO.
    # ratio 0.5 with A = -1: PPO-clipped to 0.8, below the cap.
    logp = per_token_logprob([5.0, 2.0, 5.0, 0.5])
    adv = torch.tensor([[-1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    mask = torch.ones_like(logp)
    loss, info = dual_clip_loss(logp, torch.zeros_like(logp), adv, mask, cfg(dual_clip_c=3.0))
    torch.testing.assert_close(loss[:, 0], torch.tensor([3.0, 2.0, -1.2, 0.8], dtype=torch.float64))
    assert info["clipped"][:, 0].tolist() == [1.0, 0.0, 1.0, 1.0]
    ppo, _ = ppo_clip_loss(logp, torch.zeros_like(logp), adv, mask, cfg())
    torch.testing.assert_close(loss[1:], ppo[1:])


def test_dual_clip_matches_numpy_and_dual_clipped_tokens_get_no_gradient():
    b = random_batch()
    b["logprobs"] = b["old_logprobs"] + torch.randn_like(b["old_logprobs"]) * 1.0  # some ratios > 3
    logp = b.pop("logprobs").requires_grad_(True)
    loss, info = dual_clip_loss(logp, **b, cfg=cfg(dual_clip_c=2.0))
    np_b = {k: v.numpy() for k, v in b.items()}
    expected = dual_clip_reference(logp.detach().numpy(), **np_b, clip_low=0.2, clip_high=0.2, c=2.0)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    ppo, ppo_info = ppo_clip_loss(logp, **b, cfg=cfg())
    dual = info["clipped"].bool() & ~ppo_info["clipped"].bool()
    assert dual.any() and (loss[dual] < ppo[dual]).all()
    token_mean(loss, b["mask"]).backward()
    assert (logp.grad[info["clipped"].bool()] == 0).all()


def test_dual_clip_c_must_exceed_one():
    b = random_batch()
    with pytest.raises(ValueError, match=r"algorithm\.dual_clip_c must be > 1"):
        dual_clip_loss(**b, cfg=cfg(dual_clip_c=1.0))


# ---------------------------------------------------------------- GSPO


def test_gspo_hand_computed():
    # one sequence of 2 tokens with log-ratios log 1.1 and log 1.5 (geometric mean sqrt(1.65)),
    # one padding token whose garbage log-prob must not count
    logp = torch.tensor([[math.log(1.1), math.log(1.5), 50.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    s = math.sqrt(1.65)  # 1.2845 > 1 + 0.2: the whole sequence is clipped for A > 0
    for a, expected, clipped in [(1.0, -1.2, 1.0), (-1.0, s, 0.0)]:
        adv = torch.full((1, 3), a, dtype=torch.float64)
        loss, info = gspo_loss(logp, torch.zeros_like(logp), adv, mask, cfg())
        torch.testing.assert_close(loss, torch.tensor([[expected, expected, 0.0]], dtype=torch.float64))
        torch.testing.assert_close(info["ratio"], torch.tensor([[s, s, 1.0]], dtype=torch.float64))
        assert info["clipped"].tolist() == [[clipped, clipped, 0.0]]


def test_gspo_matches_numpy():
    b = random_batch()
    loss, info = gspo_loss(**b, cfg=cfg(clip_low=0.05, clip_high=0.08))
    np_b = {k: v.numpy() for k, v in b.items()}
    np.testing.assert_allclose(
        loss.numpy(), gspo_reference(**np_b, clip_low=0.05, clip_high=0.08), rtol=1e-12, atol=1e-12
    )
    assert 0 < info["clipped"].sum() < b["mask"].sum()


def test_gspo_token_gradient_equals_sequence_level_gspo():
    """With per-sequence advantages, the GSPO-token loss under seq_mean_token_mean has the
    gradient of the paper's sequence-level objective -1/G Σ_i min(s_i A_i, clip(s_i) A_i)."""
    b = random_batch(n=16)
    b["advantages"] = b["advantages"][:, :1].expand_as(b["logprobs"]).contiguous()
    config = cfg(clip_low=0.05, clip_high=0.08)
    logp = b["logprobs"].clone().requires_grad_(True)
    loss, info = gspo_loss(logp, b["old_logprobs"], b["advantages"], b["mask"], config)
    seq_mean_token_mean(loss, b["mask"]).backward()

    logp_seq = b["logprobs"].clone().requires_grad_(True)
    m = b["mask"].double()
    s = torch.exp(((logp_seq - b["old_logprobs"]) * m).sum(-1) / m.sum(-1).clamp(min=1))
    a = b["advantages"][:, 0]
    objective = torch.minimum(s * a, s.clamp(1 - 0.05, 1 + 0.08) * a) * (m.sum(-1) > 0)
    (-objective.mean()).backward()
    torch.testing.assert_close(logp.grad, logp_seq.grad, rtol=1e-12, atol=1e-14)
    assert info["clipped"].any() and (logp.grad[info["clipped"].bool()] == 0).all()
    assert (logp.grad[b["mask"] & ~info["clipped"].bool()] != 0).all()


def test_gspo_token_form_gradient_with_token_advantages():
    """s_{i,t} = sg[s_i]·π(y_t)/sg[π(y_t)]: ∂L_{i,t}/∂log π(y_k) = −s_i·A_{i,t} if k = t (unclipped),
    else 0; a sequence-level ratio with gradient would spread A_{i,t} over all of the row's tokens."""
    b = random_batch()
    logp = b.pop("logprobs").requires_grad_(True)
    loss, info = gspo_loss(logp, **b, cfg=cfg(clip_low=0.05, clip_high=0.08))
    loss.sum().backward()
    m = b["mask"]
    s = ((logp.detach() - b["old_logprobs"]) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    expected = torch.where(m & ~info["clipped"].bool(), -s.exp() * b["advantages"], 0.0)
    torch.testing.assert_close(logp.grad, expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- REINFORCE


def test_reinforce_is_minus_advantage_times_logprob():
    b = random_batch()
    logp = b.pop("logprobs").requires_grad_(True)
    loss, info = reinforce_loss(logp, **b, cfg=cfg())
    m = b["mask"]
    torch.testing.assert_close(loss[m], -b["advantages"][m] * logp.detach()[m])
    assert (loss[~m] == 0).all() and (info["clipped"] == 0).all()
    torch.testing.assert_close(info["ratio"][m], (logp.detach() - b["old_logprobs"])[m].exp())
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.where(m, -b["advantages"], 0.0))


# ---------------------------------------------------------------- properties shared by every loss


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_masked_tokens_contribute_nothing(loss_fn):
    b = random_batch()
    loss, info = loss_fn(**b, cfg=cfg())
    garbage = b | {"logprobs": torch.where(b["mask"], b["logprobs"], 1e4)}  # overflows exp if unmasked
    garbage["logprobs"].requires_grad_(True)
    loss2, info2 = loss_fn(**garbage, cfg=cfg())
    assert (loss[~b["mask"]] == 0).all() and (info["clipped"][~b["mask"]] == 0).all()
    assert (info2["ratio"][~b["mask"]] == 1).all()
    torch.testing.assert_close(loss2, loss)
    token_mean(loss2, b["mask"]).backward()
    grad = garbage["logprobs"].grad
    assert grad.isfinite().all() and (grad[~b["mask"]] == 0).all()


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_float_mask_equals_bool_mask(loss_fn):
    b = random_batch()
    loss, _ = loss_fn(**b, cfg=cfg())
    loss_f, _ = loss_fn(**(b | {"mask": b["mask"].double()}), cfg=cfg())
    torch.testing.assert_close(loss_f, loss)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_per_sequence_advantages_are_refused(loss_fn):
    b = random_batch(n=12, t=12)  # N == T: an [N] tensor would broadcast silently as [T]
    with pytest.raises(ValueError, match=r"advantages \(12,\) must be \[N, T\]"):
        loss_fn(**(b | {"advantages": b["advantages"][:, 0]}), cfg=cfg())


@pytest.mark.parametrize("loss_fn", [ppo_clip_loss, dual_clip_loss, gspo_loss])
def test_clipped_tokens_get_zero_gradient(loss_fn):
    b = random_batch()
    logp = b.pop("logprobs").requires_grad_(True)
    loss, info = loss_fn(logp, **b, cfg=cfg())
    token_mean(loss, b["mask"]).backward()
    clipped = info["clipped"].bool()
    active = b["mask"] & ~clipped
    assert clipped.any() and active.any()
    assert (logp.grad[clipped] == 0).all()
    assert (logp.grad[active] != 0).all()


def test_single_token_completion():
    logp = torch.tensor([[-9.0, math.log(1.5), -9.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[0.0, 1.0, 0.0]])  # prompt token, one completion token, padding
    adv = torch.ones(1, 3)
    for loss_fn in (ppo_clip_loss, gspo_loss):  # a 1-token sequence's ratio is its token's ratio
        loss, info = loss_fn(logp, old, adv, mask, cfg())
        torch.testing.assert_close(loss, torch.tensor([[0.0, -1.2, 0.0]]))
        assert info["clipped"].tolist() == [[0.0, 1.0, 0.0]]
        for agg in (token_mean, seq_mean_token_mean, seq_mean_token_sum):
            torch.testing.assert_close(agg(loss, mask), torch.tensor(-1.2))
        torch.testing.assert_close(seq_mean_token_sum_norm(loss, mask, horizon=4), torch.tensor(-0.3))


# ---------------------------------------------------------------- truncated importance sampling


def test_truncated_is_weights_hand_computed():
    old = torch.tensor([[math.log(0.5), math.log(3.0), 0.0, 80.0]], requires_grad=True)
    sampler = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = truncated_is_weights(old, sampler, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0, 1.0, 1.0]]))  # capped at 2; 1 where masked
    assert not w.requires_grad
    torch.testing.assert_close(truncated_is_weights(old, sampler, mask, cap=0.1)[0, 3], torch.tensor(1.0))


def test_truncated_is_weights_match_numpy():
    b = random_batch()
    sampler = b["old_logprobs"] + torch.randn_like(b["old_logprobs"]) * 0.5
    w = truncated_is_weights(b["old_logprobs"], sampler, b["mask"], cap=1.5)
    m = b["mask"].numpy()
    expected = np.where(m, np.minimum(np.exp(b["old_logprobs"].numpy() - sampler.numpy()), 1.5), 1.0)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12)
    assert (w[b["mask"]] == 1.5).any() and (w[b["mask"]] < 1).any()


def test_truncated_is_cap_must_be_positive():
    with pytest.raises(ValueError, match=r"algorithm\.tis_cap > 0"):
        truncated_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cap=0.0)


# ---------------------------------------------------------------- clipped value loss


def test_clipped_value_loss_hand_computed():
    old = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0, 9.0]])
    values = torch.tensor([[1.5, 1.1, 0.5, 1e6]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # 1.5 -> clipped to 1.2: max(0.25, 0.64); 1.1 inside: both 0.81; 0.5 -> 0.8: max(0.25, 0.64)
    torch.testing.assert_close(loss, torch.tensor([[0.32, 0.405, 0.32, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -0.9, 0.0, 0.0]]))  # clipped: no gradient


def test_clipped_value_loss_matches_numpy():
    g = torch.Generator().manual_seed(5)
    values, old, returns = torch.randn(3, 6, 10, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 10, generator=g) < 0.7
    loss = clipped_value_loss(values, old, returns, mask, clip=0.3)
    v, o, r = values.numpy(), old.numpy(), returns.numpy()
    expected = 0.5 * np.maximum((v - r) ** 2, (o + np.clip(v - o, -0.3, 0.3) - r) ** 2)
    np.testing.assert_allclose(loss.numpy(), np.where(mask.numpy(), expected, 0.0), rtol=1e-12)


# ---------------------------------------------------------------- loss aggregation


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_aggregations_match_numpy(agg):
    b = random_batch()
    per_token = torch.randn_like(b["logprobs"]).masked_fill(~b["mask"], 1e9)  # padding must be ignored
    expected = reference_aggregation(agg.__name__, per_token.numpy(), b["mask"].numpy())
    np.testing.assert_allclose(agg(per_token, b["mask"], horizon=HORIZON).item(), expected, rtol=1e-12)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_micro_batch_accumulation_equals_full_batch(agg, loss_fn):
    b = random_batch(n=8)
    logp_full = b["logprobs"].clone().requires_grad_(True)
    per_token, _ = loss_fn(logp_full, b["old_logprobs"], b["advantages"], b["mask"], cfg())
    full = agg(per_token, b["mask"], horizon=HORIZON)
    full.backward()

    logp = b["logprobs"].clone().requires_grad_(True)
    normalisers = {"num_tokens": b["mask"].sum().item(), "num_seqs": 8, "horizon": HORIZON}
    total = torch.zeros((), dtype=torch.float64)
    for rows in torch.arange(8).chunk(4):
        micro = {k: v[rows] for k, v in b.items() if k != "logprobs"}
        per_token, _ = loss_fn(logp[rows], **micro, cfg=cfg())
        loss = agg(per_token, micro["mask"], **normalisers)
        loss.backward()
        total += loss.detach()
    torch.testing.assert_close(total, full.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(logp.grad, logp_full.grad, rtol=1e-12, atol=1e-14)
    assert logp.grad.abs().sum() > 0


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_all_masked_batch_gives_zero(agg):
    per_token = torch.randn(3, 4, requires_grad=True)
    mask = torch.zeros(3, 4)
    loss = agg(per_token, mask, horizon=HORIZON)
    assert loss.item() == 0
    loss.backward()
    assert (per_token.grad == 0).all()


def test_empty_row_contributes_zero():
    per_token = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    torch.testing.assert_close(seq_mean_token_mean(per_token, mask), torch.tensor(1.0))  # (2 + 0) / 2
    torch.testing.assert_close(seq_mean_token_sum(per_token, mask), torch.tensor(2.0))  # (4 + 0) / 2
    torch.testing.assert_close(seq_mean_token_sum_norm(per_token, mask, horizon=4), torch.tensor(0.5))
    torch.testing.assert_close(token_mean(per_token, mask), torch.tensor(2.0))


def test_seq_mean_token_sum_norm_needs_horizon():
    with pytest.raises(ValueError, match="needs horizon"):
        seq_mean_token_sum_norm(torch.ones(2, 3), torch.ones(2, 3))


# ---------------------------------------------------------------- KL estimators


def test_kl_hand_values():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-2.0, -1.0, -0.5])
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(kl_k2(logp, ref), torch.tensor([0.5, 0.5, 0.0]))
    expected_k3 = torch.tensor([math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1, 0.0])
    torch.testing.assert_close(kl_k3(logp, ref), expected_k3)
    assert kl_k3(logp, ref)[2] == 0


def test_kl_match_numpy():
    g = torch.Generator().manual_seed(2)
    logp = -torch.rand(64, 16, generator=g, dtype=torch.float64) * 5
    ref = -torch.rand(64, 16, generator=g, dtype=torch.float64) * 5
    lp, rf = logp.numpy(), ref.numpy()
    np.testing.assert_allclose(kl_k1(logp, ref).numpy(), lp - rf, rtol=1e-12)
    np.testing.assert_allclose(kl_k2(logp, ref).numpy(), 0.5 * (lp - rf) ** 2, rtol=1e-12)
    np.testing.assert_allclose(
        kl_k3(logp, ref).numpy(), np.exp(rf - lp) - (rf - lp) - 1, rtol=1e-9, atol=1e-15
    )


def test_k3_is_non_negative_and_finite():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(100_000, generator=g) * 30
    near = logp + torch.randn(100_000, generator=g) * 1e-6  # tiny log-ratios, where rounding bites
    for ref in (-torch.rand(100_000, generator=g) * 30, near, torch.full_like(logp, -1e4)):
        k3 = kl_k3(logp, ref)
        assert (k3 >= 0).all() and k3.isfinite().all()


def test_kl_sample_average_approximates_true_kl():
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(0.1, 1.0)
    torch.manual_seed(0)
    x = p.sample((200_000,))
    true_kl = torch.distributions.kl_divergence(p, q)  # 0.005
    for kl in (kl_k1, kl_k3):
        assert abs(kl(p.log_prob(x), q.log_prob(x)).mean() - true_kl) < 1e-3


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (12.0, 0.1 * (1 + 0.2 * 256 / 10_000)),  # error 1.0 clipped to +0.2
        (6.6, 0.1 * (1 + 0.1 * 256 / 10_000)),  # 6.6 / 6 - 1 = 0.1
        (6.0, 0.1),  # on target: unchanged
        (5.4, 0.1 * (1 - 0.1 * 256 / 10_000)),
        (0.0, 0.1 * (1 - 0.2 * 256 / 10_000)),  # error -1 clipped to -0.2
    ],
)
def test_adaptive_kl_coef_follows_ziegler_controller(observed, expected):
    assert adaptive_kl_coef(0.1, observed, target=6.0, horizon=10_000, n_samples=256) == pytest.approx(
        expected, rel=1e-12
    )


def test_adaptive_kl_coef_converges_towards_target():
    coef = 0.1
    for _ in range(100):  # KL stays above target: the coefficient keeps growing, by <= 20% per horizon
        coef = adaptive_kl_coef(coef, 10.0, target=6.0, horizon=1000, n_samples=100)
    assert coef == pytest.approx(0.1 * 1.02**100)


def test_adaptive_kl_coef_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"algorithm\.kl\.target"):
        adaptive_kl_coef(0.1, 1.0, target=0.0, horizon=10, n_samples=1)


# ---------------------------------------------------------------- registries


def test_registries_hold_the_functions():
    assert get_advantage("grpo") is grpo_advantages is ADVANTAGE_ESTIMATORS["grpo"]
    assert sorted(ADVANTAGE_ESTIMATORS) == [
        "dr_grpo",
        "gae",
        "grpo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "reverse_kl",
        "rloo",
    ]
    assert [get_policy_loss(n) for n in ("ppo_clip", "dual_clip", "gspo", "reinforce")] == LOSSES
    assert sorted(POLICY_LOSSES) == ["dual_clip", "gspo", "ppo_clip", "reinforce"]
    assert [get_loss_agg(a.__name__) for a in AGGREGATIONS] == AGGREGATIONS
    assert len(LOSS_AGGREGATIONS) == 4
    assert [get_kl(k) for k in ("k1", "k2", "k3")] == [kl_k1, kl_k2, kl_k3] == list(KL_ESTIMATORS.values())


@pytest.mark.parametrize(
    ("getter", "message"),
    [
        (get_advantage, "unknown algorithm.advantage 'nope'; known: dr_grpo, gae, grpo, reinforce_pp, "),
        (
            get_policy_loss,
            "unknown algorithm.policy_loss 'nope'; known: dual_clip, gspo, ppo_clip, reinforce",
        ),
        (get_loss_agg, "unknown algorithm.loss_agg 'nope'; known: seq_mean_token_mean, seq_mean_token_sum, "),
        (get_kl, "unknown algorithm.kl.estimator 'nope'; known: k1, k2, k3"),
    ],
)
def test_unknown_name_lists_known_names(getter, message):
    with pytest.raises(ValueError, match=message):
        getter("nope")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGE_ESTIMATORS.register("grpo")(lambda: None)
