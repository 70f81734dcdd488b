"""Tests of rlft.algorithms against hand-computed numbers and float64 numpy references."""

import math

import numpy as np
import pytest
import torch

from rlft.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    get_advantage,
    get_kl,
    get_loss_agg,
    get_policy_loss,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    ppo_clip_loss,
    seq_mean_token_mean,
    token_mean,
)

# ---------------------------------------------------------------- numpy references (float64)


def grpo_reference(rewards: np.ndarray, group_ids: np.ndarray, norm_by_std: bool, eps: float) -> np.ndarray:
    adv = np.zeros_like(rewards, dtype=np.float64)
    for g in np.unique(group_ids):
        idx = np.where((group_ids == g) & ~np.isnan(rewards))[0]
        r = rewards[idx].astype(np.float64)
        if len(r) < 2 or np.all(r == r[0]):
            continue
        adv[idx] = r - r.mean()
        if norm_by_std:
            adv[idx] /= r.std(ddof=1) + eps
    return adv


def ppo_reference(logp, old, adv, mask, clip_low, clip_high) -> np.ndarray:
    ratio = np.exp(logp - old)
    adv = adv[:, None] if adv.ndim == 1 else adv
    loss = -np.minimum(ratio * adv, np.clip(ratio, 1 - clip_low, 1 + clip_high) * adv)
    return np.where(mask, loss, 0.0)


def seq_mean_token_mean_reference(per_token: np.ndarray, mask: np.ndarray) -> float:
    total = 0.0
    for row, m in zip(per_token, mask, strict=True):
        if m.any():
            total += row[m].mean()
    return total / len(per_token)


def random_batch(n: int = 8, t: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 policy/old logprobs, per-sequence advantages and a right-padded mask."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    logp = old + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.3  # some ratios clip
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return {"logprobs": logp, "old_logprobs": old, "advantages": adv, "mask": mask}


# ---------------------------------------------------------------- GRPO advantages


def test_grpo_hand_computed_two_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: mean 1/3, sample std sqrt(1/3); group 1: mean 2, sample std 1
    s = math.sqrt(1 / 3)
    expected = torch.tensor([(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, -1.0, 0.0, 1.0])
    torch.testing.assert_close(grpo_advantages(rewards, group_ids, eps=0.0), expected)


def test_grpo_equal_rewards_and_single_sample_give_exact_zero():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 1.0, 0.0])
    group_ids = torch.tensor([0, 0, 0, 1, 2, 2])  # group 0 constant, group 1 a single sample
    adv = grpo_advantages(rewards, group_ids)
    assert not adv.isnan().any()
    assert (adv[:4] == 0).all()
    assert adv[4] > 0 > adv[5]


def test_grpo_nan_reward_is_no_opinion():
    rewards = torch.tensor([1.0, float("nan"), 0.0, 2.0, float("nan"), float("nan")])
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1])  # group 1 has no valid reward at all
    adv = grpo_advantages(rewards, group_ids, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, -1.0, 1.0, 0.0, 0.0]))  # mean 1, std 1


def test_grpo_unsorted_group_ids_match_sorted():
    rewards = torch.tensor([1.0, 5.0, 2.0, 7.0, 3.0, 6.0])
    group_ids = torch.tensor([42, 7, 42, 7, 42, 7])
    adv = grpo_advantages(rewards, group_ids, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0, 0.0]))


def test_grpo_without_std_is_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 4.0, 2.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1])
    adv = grpo_advantages(rewards, group_ids, norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 1.0, -1.0]))


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_matches_numpy_on_random_groups(norm_by_std: bool):
    g = torch.Generator().manual_seed(1)
    group_ids = torch.randint(0, 10, (200,), generator=g) * 3  # uneven, unsorted, non-contiguous
    rewards = torch.randint(0, 3, (200,), generator=g).to(torch.float64)  # ties and constant groups
    rewards[torch.rand(200, generator=g) < 0.2] = float("nan")
    adv = grpo_advantages(rewards, group_ids, norm_by_std=norm_by_std)
    expected = grpo_reference(rewards.numpy(), group_ids.numpy(), norm_by_std, eps=1e-6)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- PPO clip


def test_ppo_clip_hand_computed():
    # one token per case: ratio inside / above / below [0.8, 1.2], with A = +2 and A = -2
    ratios = torch.tensor([1.1, 1.5, 0.5, 1.1, 1.5, 0.5])
    adv = torch.tensor([[2.0], [2.0], [2.0], [-2.0], [-2.0], [-2.0]])
    logp = ratios.log()[:, None]
    loss, info = ppo_clip_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(logp))
    # A>0: -min(rA, clip(r)A) -> inside -2.2, above clipped to -2.4, below -1.0 (unclipped is smaller)
    # A<0: inside 2.2, above 3.0 (unclipped is smaller), below clipped to 1.6
    expected = torch.tensor([-2.2, -2.4, -1.0, 2.2, 3.0, 1.6])
    torch.testing.assert_close(loss[:, 0], expected)
    torch.testing.assert_close(info["clipped"][:, 0], torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(info["ratio"][:, 0], ratios)


def test_ppo_clip_asymmetric_dapo_bounds():
    logp = torch.tensor([[math.log(1.25)], [math.log(0.85)]])
    loss, info = ppo_clip_loss(
        logp, torch.zeros_like(logp), torch.tensor([1.0, -1.0]), torch.ones_like(logp), clip_high=0.28
    )
    torch.testing.assert_close(loss[:, 0], torch.tensor([-1.25, 0.85]))  # neither bound reached
    assert info["clipped"].sum() == 0


@pytest.mark.parametrize("token_advantages", [False, True])
def test_ppo_clip_matches_numpy(token_advantages: bool):
    b = random_batch()
    if token_advantages:
        b["advantages"] = torch.randn_like(b["logprobs"])
    loss, info = ppo_clip_loss(**b, clip_low=0.2, clip_high=0.28)
    np_b = {k: v.numpy() for k, v in b.items()}
    expected = ppo_reference(
        np_b["logprobs"], np_b["old_logprobs"], np_b["advantages"], np_b["mask"], 0.2, 0.28
    )
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert 0 < info["clipped"].sum() < b["mask"].sum()  # the batch exercises both branches


def test_masked_tokens_contribute_nothing():
    b = random_batch()
    loss, info = ppo_clip_loss(**b)
    garbage = b | {"logprobs": torch.where(b["mask"], b["logprobs"], 1e4)}  # overflows exp if unmasked
    garbage["logprobs"].requires_grad_(True)
    loss2, _ = ppo_clip_loss(**garbage)
    assert (loss[~b["mask"]] == 0).all() and (info["clipped"][~b["mask"]] == 0).all()
    torch.testing.assert_close(loss2, loss)
    token_mean(loss2, b["mask"]).backward()
    grad = garbage["logprobs"].grad
    assert grad.isfinite().all() and (grad[~b["mask"]] == 0).all()


def test_float_mask_equals_bool_mask():
    b = random_batch()
    loss, _ = ppo_clip_loss(**b)
    loss_f, _ = ppo_clip_loss(**(b | {"mask": b["mask"].double()}))
    torch.testing.assert_close(loss_f, loss)


def test_single_token_completion():
    logp = torch.tensor([[-9.0, math.log(1.5), -9.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[0.0, 1.0, 0.0]])  # prompt token, one completion token, padding
    loss, info = ppo_clip_loss(logp, old, torch.tensor([1.0]), mask)
    torch.testing.assert_close(loss, torch.tensor([[0.0, -1.2, 0.0]]))
    torch.testing.assert_close(token_mean(loss, mask), torch.tensor(-1.2))
    torch.testing.assert_close(seq_mean_token_mean(loss, mask), torch.tensor(-1.2))
    assert info["clipped"].tolist() == [[0.0, 1.0, 0.0]]


def test_clipped_tokens_get_zero_gradient():
    b = random_batch()
    logp = b.pop("logprobs").requires_grad_(True)
    loss, info = ppo_clip_loss(logp, **b)
    token_mean(loss, b["mask"]).backward()
    clipped = info["clipped"].bool()
    active = b["mask"] & ~clipped & (b["advantages"][:, None] != 0)
    assert clipped.any() and active.any()
    assert (logp.grad[clipped] == 0).all()
    assert (logp.grad[active] != 0).all()


# ---------------------------------------------------------------- loss aggregation


def test_aggregations_match_numpy():
    b = random_batch()
    per_token = torch.randn_like(b["logprobs"]).masked_fill(~b["mask"], 1e9)  # padding must be ignored
    m, pt = b["mask"].numpy(), per_token.numpy()
    np.testing.assert_allclose(token_mean(per_token, b["mask"]).item(), pt[m].mean(), rtol=1e-12)
    np.testing.assert_allclose(
        seq_mean_token_mean(per_token, b["mask"]).item(), seq_mean_token_mean_reference(pt, m), rtol=1e-12
    )


@pytest.mark.parametrize("agg", [token_mean, seq_mean_token_mean])
def test_micro_batch_accumulation_equals_full_batch(agg):
    b = random_batch(n=8)
    logp_full = b["logprobs"].clone().requires_grad_(True)
    full = agg(ppo_clip_loss(logp_full, b["old_logprobs"], b["advantages"], b["mask"])[0], b["mask"])
    full.backward()

    logp = b["logprobs"].clone().requires_grad_(True)
    normalisers = {"num_tokens": b["mask"].sum().item(), "num_seqs": 8}
    total = torch.zeros((), dtype=torch.float64)
    for rows in torch.arange(8).chunk(4):
        micro = {k: v[rows] for k, v in b.items() if k != "logprobs"}
        per_token, _ = ppo_clip_loss(logp[rows], **micro)
        loss = agg(per_token, micro["mask"], **normalisers)
        loss.backward()
        total += loss.detach()
    assert torch.allclose(total, full.detach())
    assert torch.allclose(logp.grad, logp_full.grad)


@pytest.mark.parametrize("agg", [token_mean, seq_mean_token_mean])
def test_all_masked_batch_gives_zero(agg):
    per_token = torch.randn(3, 4, requires_grad=True)
    mask = torch.zeros(3, 4)
    loss = agg(per_token, mask)
    assert loss.item() == 0
    loss.backward()
    assert (per_token.grad == 0).all()


def test_seq_mean_token_mean_empty_row_contributes_zero():
    per_token = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    torch.testing.assert_close(seq_mean_token_mean(per_token, mask), torch.tensor(1.0))  # (2 + 0) / 2


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


# ---------------------------------------------------------------- registries


def test_registries_hold_the_functions():
    assert get_advantage("grpo") is grpo_advantages is ADVANTAGE_ESTIMATORS["grpo"]
    assert get_policy_loss("ppo_clip") is ppo_clip_loss is POLICY_LOSSES["ppo_clip"]
    assert get_loss_agg("token_mean") is token_mean and "seq_mean_token_mean" in LOSS_AGGREGATIONS
    assert [get_kl(k) for k in ("k1", "k2", "k3")] == [kl_k1, kl_k2, kl_k3] == list(KL_ESTIMATORS.values())


@pytest.mark.parametrize(
    ("getter", "message"),
    [
        (get_advantage, "unknown algorithm.advantage 'nope'; known: grpo"),
        (get_policy_loss, "unknown algorithm.policy_loss 'nope'; known: ppo_clip"),
        (get_loss_agg, "unknown algorithm.loss_agg 'nope'; known: seq_mean_token_mean, token_mean"),
        (get_kl, "unknown algorithm.kl.estimator 'nope'; known: k1, k2, k3"),
    ],
)
def test_unknown_name_lists_known_names(getter, message):
    with pytest.raises(ValueError, match=message):
        getter("nope")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGE_ESTIMATORS.register("grpo")(lambda: None)
