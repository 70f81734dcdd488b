"""Tests of the advantage estimators, whitening and DAPO's pieces against hand-computed numbers and
float64 numpy references written, row by row, from the papers' equations."""

import math

import numpy as np
import pytest
import torch

from rlft.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInput,
    discounted_cumsum,
    dr_grpo_advantages,
    gae_advantages,
    groups_with_signal,
    grpo_advantages,
    masked_whiten,
    overlong_penalty,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)
from rlft.config import AlgorithmConfig

NAN = float("nan")
GROUP_ESTIMATORS = [grpo_advantages, dr_grpo_advantages, rloo_advantages]

# ---------------------------------------------------------------- numpy references (float64)


def groups_of(rewards: np.ndarray, group_ids: np.ndarray):
    """Yield the indices of each group's valid (non-NaN) samples."""
    for g in np.unique(group_ids):
        yield np.where((group_ids == g) & ~np.isnan(rewards))[0]


def grpo_reference(rewards, group_ids, norm_by_std: bool) -> np.ndarray:
    adv = np.zeros(len(rewards))
    for idx in groups_of(rewards, group_ids):
        r = rewards[idx]
        if len(r) < 2 or np.all(r == r[0]):
            continue
        adv[idx] = r - r.mean()
        if norm_by_std:
            adv[idx] /= r.std(ddof=1) + 1e-6
    return adv


def rloo_reference(rewards, group_ids) -> np.ndarray:
    adv = np.zeros(len(rewards))
    for idx in groups_of(rewards, group_ids):
        for i in idx:
            others = [rewards[j] for j in idx if j != i]
            adv[i] = rewards[i] - np.mean(others) if others else 0.0
    return adv


def token_rewards_reference(i, outcome, mask, token_rewards) -> tuple[np.ndarray, np.ndarray]:
    """(positions, r_t at those positions) of row i: token rewards plus the outcome on the last."""
    pos = np.where(mask[i] > 0)[0]
    r = np.zeros(len(pos)) if token_rewards is None else token_rewards[i, pos].copy()
    if len(pos):
        r[-1] += outcome
    return pos, r


def whiten_reference(x: np.ndarray, shift_mean: bool = True) -> np.ndarray:
    w = (x - x.mean()) / np.sqrt(x.var() + 1e-8)  # population variance, as documented
    return w if shift_mean else w + x.mean()


def reinforce_pp_reference(outcomes, mask, token_rewards, gamma) -> tuple[np.ndarray, np.ndarray]:
    """G_t = Σ_{k>=t} γ^{k-t} r_k per row, then whitening over every valid token of the batch."""
    returns, valid = np.zeros(mask.shape), np.zeros(mask.shape, dtype=bool)
    for i, outcome in enumerate(outcomes):
        if np.isnan(outcome):
            continue
        pos, r = token_rewards_reference(i, outcome, mask, token_rewards)
        for j, t in enumerate(pos):
            returns[i, t] = sum(gamma ** (k - j) * r[k] for k in range(j, len(pos)))
        valid[i, pos] = True
    adv = np.zeros(mask.shape)
    if valid.any():
        adv[valid] = whiten_reference(returns[valid])
    return adv, returns


def gae_reference(outcomes, mask, token_rewards, values, cfg) -> tuple[np.ndarray, np.ndarray]:
    """GAE (arXiv 1506.02438, eq. 16) per row; V after the last completion token is 0."""
    valid = (mask > 0) & ~np.isnan(outcomes)[:, None]
    rewards = np.zeros(mask.shape)
    for i, outcome in enumerate(outcomes):
        if not np.isnan(outcome):
            pos, r = token_rewards_reference(i, outcome, mask, token_rewards)
            rewards[i, pos] = r
    if cfg.whiten_rewards and valid.any():
        rewards[valid] = whiten_reference(rewards[valid], shift_mean=False)
    adv, returns = np.zeros(mask.shape), np.where(mask > 0, values, 0.0)  # no reward: A = 0, R = V
    for i in np.where(valid.any(-1))[0]:
        pos = np.where(valid[i])[0]
        r, v = rewards[i, pos], [*values[i, pos], 0.0]
        deltas = [r[t] + cfg.gamma * v[t + 1] - v[t] for t in range(len(pos))]
        for t in range(len(pos)):
            adv[i, pos[t]] = sum((cfg.gamma * cfg.lam) ** k * deltas[t + k] for k in range(len(pos) - t))
            returns[i, pos[t]] = adv[i, pos[t]] + v[t]
    if cfg.whiten_advantages and valid.any():
        adv[valid] = whiten_reference(adv[valid])
    return adv, returns


# ---------------------------------------------------------------- inputs


def cfg(**overrides) -> AlgorithmConfig:
    return AlgorithmConfig(**overrides)


def sequence_input(rewards: list[float], group_ids: list[int]) -> AdvantageInput:
    """One completion token per sample: token advantages are then the sequence advantages."""
    return AdvantageInput(
        torch.tensor(rewards, dtype=torch.float64), torch.tensor(group_ids), torch.ones(len(rewards), 1)
    )


def sequence_advantages(fn, rewards: list[float], group_ids: list[int], **overrides) -> torch.Tensor:
    advantages, returns = fn(sequence_input(rewards, group_ids), cfg(**overrides))
    torch.testing.assert_close(returns, advantages)
    return advantages[:, 0]


def random_input(
    n: int = 24, t: int = 10, seed: int = 0, token_rewards: bool = False, values: bool = False
) -> AdvantageInput:
    """float64 rewards in uneven unsorted groups (ties, constant groups, NaN), a mask with a prompt
    prefix and right padding (one all-masked row, one single-token row), garbage outside the mask."""
    g = torch.Generator().manual_seed(seed)
    group_ids = torch.randint(0, n // 4, (n,), generator=g) * 7
    rewards = torch.randint(0, 3, (n,), generator=g).double() + 0.1 * torch.rand(n, generator=g).double()
    rewards[:3] = rewards[3]  # some ties
    rewards[torch.rand(n, generator=g) < 0.15] = NAN
    group_ids[-4:], rewards[-4:] = torch.tensor([998, 998, 998, 999]), 0.3  # a constant group, a lone sample
    start = torch.randint(0, 3, (n,), generator=g)
    length = torch.randint(1, t - 2, (n,), generator=g)
    length[0], length[1] = 0, 1
    pos = torch.arange(t)[None, :]
    inside = (pos >= start[:, None]) & (pos < (start + length)[:, None])
    kl_penalty = torch.where(inside, -0.1 * torch.rand(n, t, generator=g).double(), 0.0)
    critic = torch.where(inside, torch.randn(n, t, generator=g).double(), NAN)
    return AdvantageInput(
        rewards,
        group_ids,
        inside.double(),
        kl_penalty if token_rewards else None,
        critic if values else None,
    )


def numpy_inputs(data: AdvantageInput) -> dict[str, np.ndarray | None]:
    return {
        "outcomes": data.rewards.numpy(),
        "mask": data.mask.numpy(),
        "token_rewards": None if data.token_rewards is None else data.token_rewards.numpy(),
    }


def broadcast(seq: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return seq[:, None] * mask


# ---------------------------------------------------------------- GRPO and Dr. GRPO


def test_grpo_hand_computed_two_groups():
    adv = sequence_advantages(grpo_advantages, [1.0, 0.0, 0.0, 1.0, 2.0, 3.0], [0, 0, 0, 1, 1, 1])
    # group 0: mean 1/3, sample std sqrt(1/3); group 1: mean 2, sample std 1 (+ 1e-6 each)
    s = math.sqrt(1 / 3) + 1e-6
    expected = [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, -1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6)]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("fn", GROUP_ESTIMATORS)
def test_equal_rewards_and_single_sample_give_exact_zero(fn):
    rewards = [0.1, 0.1, 0.1, 0.7, 1.0, 0.0]  # group 0 constant (0.1 is inexact), group 1 one sample
    adv = sequence_advantages(fn, rewards, [0, 0, 0, 1, 2, 2])
    assert (adv[:4] == 0).all()
    assert adv[4] > 0 > adv[5]


def test_grpo_nan_reward_is_no_opinion():
    rewards = [1.0, NAN, 0.0, 2.0, NAN, NAN]  # group 1 has no valid reward at all
    adv = sequence_advantages(grpo_advantages, rewards, [0, 0, 0, 0, 1, 1])
    expected = torch.tensor([0.0, 0.0, -1.0, 1.0, 0.0, 0.0], dtype=torch.float64) / (
        1 + 1e-6
    )  # mean 1, std 1
    torch.testing.assert_close(adv, expected)


def test_grpo_unsorted_group_ids_match_sorted():
    adv = sequence_advantages(grpo_advantages, [1.0, 5.0, 2.0, 7.0, 3.0, 6.0], [42, 7, 42, 7, 42, 7])
    expected = torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64) / (1 + 1e-6)
    torch.testing.assert_close(adv, expected)


def test_grpo_without_std_and_dr_grpo_center_only():
    rewards, group_ids = [1.0, 0.0, 0.0, 4.0, 2.0], [0, 0, 0, 1, 1]
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(
        sequence_advantages(grpo_advantages, rewards, group_ids, norm_adv_by_std=False), expected
    )
    for norm in (True, False):  # Dr. GRPO never divides by the std
        torch.testing.assert_close(
            sequence_advantages(dr_grpo_advantages, rewards, group_ids, norm_adv_by_std=norm), expected
        )


@pytest.mark.parametrize(
    ("fn", "overrides", "norm_by_std"),
    [
        (grpo_advantages, {}, True),
        (grpo_advantages, {"norm_adv_by_std": False}, False),
        (dr_grpo_advantages, {}, False),
    ],
)
def test_grpo_family_matches_numpy_on_random_groups(fn, overrides, norm_by_std):
    data = random_input()
    adv, returns = fn(data, cfg(**overrides))
    seq = grpo_reference(data.rewards.numpy(), data.group_ids.numpy(), norm_by_std)
    np.testing.assert_allclose(adv.numpy(), broadcast(seq, data.mask.numpy()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, adv)


# ---------------------------------------------------------------- RLOO


def test_rloo_hand_computed():
    # group 0 (size 2): 1 - 3 and 3 - 1; group 1: 0 - (2+4)/2, 2 - (0+4)/2, 4 - (0+2)/2
    adv = sequence_advantages(rloo_advantages, [1.0, 3.0, 0.0, 2.0, 4.0], [0, 0, 1, 1, 1])
    torch.testing.assert_close(adv, torch.tensor([-2.0, 2.0, -3.0, 0.0, 3.0], dtype=torch.float64))


def test_rloo_leaves_nan_out_and_a_lone_sample_gets_zero():
    rewards = [1.0, NAN, 0.0, 5.0, 2.0, NAN]  # group 1: one valid sample left
    adv = sequence_advantages(rloo_advantages, rewards, [0, 0, 0, 1, 2, 2])
    torch.testing.assert_close(adv, torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0, 0.0], dtype=torch.float64))


def test_rloo_matches_numpy_on_random_groups():
    data = random_input(seed=1)
    adv, returns = rloo_advantages(data, cfg())
    seq = rloo_reference(data.rewards.numpy(), data.group_ids.numpy())
    np.testing.assert_allclose(adv.numpy(), broadcast(seq, data.mask.numpy()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, adv)


def test_rloo_folds_kl_penalties_into_the_sequence_reward():
    data = random_input(seed=4, token_rewards=True)
    adv, _ = rloo_advantages(data, cfg())
    sequence = data.rewards.numpy() + (data.token_rewards * data.mask).sum(-1).numpy()
    seq = rloo_reference(sequence, data.group_ids.numpy())
    np.testing.assert_allclose(adv.numpy(), broadcast(seq, data.mask.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [f for f in GROUP_ESTIMATORS if f is not rloo_advantages])
def test_group_estimators_refuse_kl_in_reward(fn):
    with pytest.raises(ValueError, match=r"algorithm\.kl\.in_reward"):
        fn(random_input(token_rewards=True), cfg())


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_hand_computed():
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    token_rewards = torch.tensor([[0.0, -0.1, -0.2, -0.3, 0.0]], dtype=torch.float64)
    data = AdvantageInput(torch.tensor([1.0], dtype=torch.float64), torch.tensor([0]), mask, token_rewards)
    adv, returns = reinforce_pp_advantages(data, cfg(gamma=0.5))
    # r = [-0.1, -0.2, -0.3 + 1]; G_2 = 0.7, G_1 = -0.2 + 0.35 = 0.15, G_0 = -0.1 + 0.075 = -0.025
    torch.testing.assert_close(returns, torch.tensor([[0.0, -0.025, 0.15, 0.7, 0.0]], dtype=torch.float64))
    g = np.array([-0.025, 0.15, 0.7])
    expected = (g - g.mean()) / np.sqrt(g.var() + 1e-8)
    torch.testing.assert_close(adv[0, 1:4], torch.from_numpy(expected))
    assert adv[0, 0] == adv[0, 4] == 0


def test_reinforce_pp_baseline_hand_computed():
    # group [1, 0]: centred [0.5, -0.5]; gamma 1, no KL: row 0's two tokens 0.5, row 1's token -0.5
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    data = AdvantageInput(torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([3, 3]), mask)
    adv, returns = reinforce_pp_baseline_advantages(data, cfg())
    torch.testing.assert_close(returns, torch.tensor([[0.5, 0.5], [-0.5, 0.0]], dtype=torch.float64))
    g = np.array([0.5, 0.5, -0.5])  # mean 1/6, population std sqrt(2)/3
    w = (g - g.mean()) / np.sqrt(g.var() + 1e-8)
    torch.testing.assert_close(adv, torch.tensor([[w[0], w[1]], [w[2], 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("token_rewards", [False, True])
def test_reinforce_pp_matches_numpy(gamma, token_rewards):
    data = random_input(seed=2, token_rewards=token_rewards)
    adv, returns = reinforce_pp_advantages(data, cfg(gamma=gamma))
    expected_adv, expected_returns = reinforce_pp_reference(**numpy_inputs(data), gamma=gamma)
    np.testing.assert_allclose(returns.numpy(), expected_returns, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(adv.numpy(), expected_adv, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("token_rewards", [False, True])
def test_reinforce_pp_baseline_matches_numpy(gamma, token_rewards):
    data = random_input(seed=3, token_rewards=token_rewards)
    adv, returns = reinforce_pp_baseline_advantages(data, cfg(gamma=gamma))
    centred = grpo_reference(data.rewards.numpy(), data.group_ids.numpy(), norm_by_std=False)
    centred[np.isnan(data.rewards.numpy())] = NAN  # keep "no opinion" samples out
    inputs = numpy_inputs(data) | {"outcomes": centred}
    expected_adv, expected_returns = reinforce_pp_reference(**inputs, gamma=gamma)
    np.testing.assert_allclose(returns.numpy(), expected_returns, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(adv.numpy(), expected_adv, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- GAE


def test_gae_hand_computed():
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[9.0, 0.5, 1.0, 2.0, 9.0]], dtype=torch.float64)  # 9 = garbage outside the mask
    token_rewards = torch.tensor([[0.0, 0.1, 0.0, 0.0, 0.0]], dtype=torch.float64)
    data = AdvantageInput(
        torch.tensor([1.0], dtype=torch.float64), torch.tensor([0]), mask, token_rewards, values
    )
    adv, returns = gae_advantages(data, cfg(gamma=0.9, lam=0.5, whiten_advantages=False))
    # r = [0.1, 0, 1]; deltas: 0.1 + 0.9·1 - 0.5 = 0.5, 0 + 0.9·2 - 1 = 0.8, 1 + 0 - 2 = -1
    # A_2 = -1, A_1 = 0.8 + 0.45·(-1) = 0.35, A_0 = 0.5 + 0.45·0.35 = 0.6575; R = A + V
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.6575, 0.35, -1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 1.1575, 1.35, 1.0, 0.0]], dtype=torch.float64))


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    data = random_input(seed=4, token_rewards=True, values=True)
    adv, returns = gae_advantages(data, cfg(gamma=1.0, lam=1.0, whiten_advantages=False))
    _, rewards_to_go = reinforce_pp_reference(**numpy_inputs(data), gamma=1.0)  # G_t, not whitened
    valid = data.mask.bool() & ~data.rewards.isnan()[:, None]
    expected = np.where(valid.numpy(), rewards_to_go - np.nan_to_num(data.values.numpy()), 0.0)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns[valid], torch.from_numpy(rewards_to_go)[valid])


@pytest.mark.parametrize(
    "overrides",
    [
        {"gamma": 1.0, "lam": 0.95},
        {"gamma": 0.99, "lam": 0.9, "whiten_advantages": False},
        {"gamma": 0.9, "lam": 0.8, "whiten_rewards": True},
    ],
)
def test_gae_matches_numpy(overrides):
    data = random_input(seed=5, token_rewards=True, values=True)
    config = cfg(**overrides)
    adv, returns = gae_advantages(data, config)
    expected_adv, expected_returns = gae_reference(
        **numpy_inputs(data), values=np.nan_to_num(data.values.numpy()), cfg=config
    )
    np.testing.assert_allclose(adv.numpy(), expected_adv, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(returns.numpy(), expected_returns, rtol=1e-10, atol=1e-10)


def test_gae_needs_values():
    with pytest.raises(ValueError, match=r"algorithm\.advantage=gae needs critic values"):
        gae_advantages(random_input(), cfg())


def test_gae_nan_reward_sample_keeps_its_value_as_return():
    data = random_input(seed=6, values=True)
    no_opinion = data.rewards.isnan() & (data.mask.sum(-1) > 0)
    assert no_opinion.any()
    adv, returns = gae_advantages(data, cfg())
    assert (adv[no_opinion] == 0).all()
    m = data.mask[no_opinion].bool()
    torch.testing.assert_close(returns[no_opinion][m], data.values[no_opinion][m])


# ---------------------------------------------------------------- properties shared by every estimator


def estimator_input(fn) -> AdvantageInput:
    """A random batch, with critic values for the estimator that needs them."""
    return random_input(seed=7, values=fn is gae_advantages)


@pytest.mark.parametrize("fn", ADVANTAGE_ESTIMATORS.values())
def test_zero_outside_mask_and_never_nan(fn):
    data = estimator_input(fn)
    adv, returns = fn(data, cfg())
    outside = ~data.mask.bool()
    assert adv.isfinite().all() and returns.isfinite().all()
    assert (adv[outside] == 0).all() and (returns[outside] == 0).all()
    assert (adv[0] == 0).all()  # the all-masked row
    assert adv[data.rewards.isnan()].eq(0).all()


@pytest.mark.parametrize("fn", ADVANTAGE_ESTIMATORS.values())
def test_nan_reward_samples_change_nothing_else(fn):
    """Adding "no opinion" samples to a batch leaves every other sample's advantage as it was."""
    data = estimator_input(fn)
    keep = ~data.rewards.isnan()
    kept = AdvantageInput(
        data.rewards[keep],
        data.group_ids[keep],
        data.mask[keep],
        None,
        None if data.values is None else data.values[keep],
    )
    adv, _ = fn(data, cfg())
    adv_kept, _ = fn(kept, cfg())
    torch.testing.assert_close(adv[keep], adv_kept, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", ADVANTAGE_ESTIMATORS.values())
def test_single_token_completions(fn):
    # two groups of one-token completions; gamma/lam do not matter with one token
    data = AdvantageInput(
        torch.tensor([1.0, 0.0, 2.0, 2.0], dtype=torch.float64),
        torch.tensor([0, 0, 1, 1]),
        torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64),
        values=torch.zeros(4, 2, dtype=torch.float64) if fn is gae_advantages else None,
    )
    adv, _ = fn(data, cfg(gamma=0.5, lam=0.5))
    assert adv.isfinite().all() and (adv[data.mask == 0] == 0).all()
    first, second = adv[0, 1], adv[1, 1]
    assert first > second  # the better completion of group 0 is pushed up relative to its neighbour


def test_advantage_input_checks_shapes():
    with pytest.raises(ValueError, match=r"values \(3, 4\) must be \[N, T\] = \(3, 5\)"):
        AdvantageInput(
            torch.zeros(3), torch.zeros(3, dtype=torch.long), torch.ones(3, 5), values=torch.zeros(3, 4)
        )
    with pytest.raises(ValueError, match="must be \\[N\\]"):
        AdvantageInput(torch.zeros(3), torch.zeros(4, dtype=torch.long), torch.ones(3, 5))


# ---------------------------------------------------------------- whitening and returns-to-go


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_numpy(shift_mean):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64) * 3 + 1
    mask = torch.rand(6, 9, generator=g) < 0.6
    out = masked_whiten(torch.where(mask, x, NAN), mask.double(), shift_mean=shift_mean)  # NaN padding
    expected = np.zeros((6, 9))
    expected[mask.numpy()] = whiten_reference(x.numpy()[mask.numpy()], shift_mean)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_masked_whiten_degenerate_batches_give_zero_not_nan():
    mask = torch.tensor([[0.0, 1.0, 0.0]])
    assert masked_whiten(torch.tensor([[5.0, 3.0, 7.0]]), mask).tolist() == [[0.0, 0.0, 0.0]]  # one token
    assert masked_whiten(torch.full((2, 3), 0.25), torch.ones(2, 3)).eq(0).all()  # zero variance
    assert masked_whiten(torch.randn(2, 3), torch.zeros(2, 3)).eq(0).all()  # nothing valid
    torch.testing.assert_close(
        masked_whiten(torch.full((1, 3), 0.25), torch.ones(1, 3), shift_mean=False), torch.full((1, 3), 0.25)
    )


def test_discounted_cumsum_hand_computed():
    x = torch.tensor([[1.0, 2.0, 4.0]])
    torch.testing.assert_close(discounted_cumsum(x, 0.5), torch.tensor([[3.0, 4.0, 4.0]]))
    torch.testing.assert_close(discounted_cumsum(x, 1.0), torch.tensor([[7.0, 6.0, 4.0]]))


# ---------------------------------------------------------------- DAPO


def test_overlong_penalty_follows_dapo_eq_13():
    lengths = torch.tensor([10, 15, 16, 18, 20, 25])  # long, as completion lengths come
    # L_max = 20, L_cache = 5: no penalty up to 15, linear down to -1 at 20, -1 beyond
    expected = torch.tensor([0.0, 0.0, -0.2, -0.6, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, max_len=20, buffer_len=5), expected)
    torch.testing.assert_close(overlong_penalty(lengths.double(), 20, 5, penalty=0.5), expected.double() / 2)


def test_overlong_penalty_matches_paper_piecewise_definition():
    lengths = torch.arange(0, 40)
    max_len, cache = 32, 12
    expected = [
        0.0 if n <= max_len - cache else ((max_len - cache) - n) / cache if n <= max_len else -1.0
        for n in lengths.tolist()
    ]
    torch.testing.assert_close(
        overlong_penalty(lengths, max_len, cache).double(), torch.tensor(expected, dtype=torch.float64)
    )


def test_overlong_penalty_needs_a_buffer():
    with pytest.raises(ValueError, match=r"algorithm\.overlong_buffer_len"):
        overlong_penalty(torch.tensor([3]), max_len=8, buffer_len=0)


def test_groups_with_signal():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, NAN, 1.0, NAN, NAN, 0.5, NAN, 0.7, 3.0])
    group_ids = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5])
    # 0 equal, 1 differ, 2 equal once NaN is ignored, 3 all NaN, 4 differ with a NaN, 5 alone
    expected = [False, False, True, True, False, False, False, False, False, True, True, True, False]
    assert groups_with_signal(rewards, group_ids).tolist() == expected


def test_groups_with_signal_matches_numpy_on_random_groups():
    data = random_input(seed=9)
    r, ids = data.rewards.numpy(), data.group_ids.numpy()
    expected = np.zeros(len(r), dtype=bool)
    for g in np.unique(ids):
        valid = r[(ids == g) & ~np.isnan(r)]
        expected[ids == g] = len(set(valid.tolist())) >= 2
    assert groups_with_signal(data.rewards, data.group_ids).tolist() == expected.tolist()
    assert expected.any() and not expected.all()
