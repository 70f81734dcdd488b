"""Episode -> learner Sample -> loss: environment tokens inside a multi-turn episode are in the
sequence but out of the loss, the advantage estimators and the log-prob comparison."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlft.algorithms import AdvantageInput, gae_advantages, reinforce_pp_advantages
from rlft.algorithms.advantages import _last_token
from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, RolloutConfig, SamplingConfig
from rlft.learner.batch import Sample, collate, pack_rows
from rlft.learner.learner import Learner
from rlft.rollout.episode import Episode
from rlft.rollout.worker import RolloutWorker


def _episode(reward: float = 1.0) -> Episode:
    # two model turns (3 and 2 tokens) around an environment message of 2 tokens
    return Episode(
        prompt_ids=[1, 2],
        completion_ids=[10, 11, 12, 20, 21, 13, 14],
        loss_mask=[1, 1, 1, 0, 0, 1, 1],
        sampler_logprobs=[-0.1, -0.2, -0.3, 0.0, 0.0, -0.4, -0.5],
        reward=reward,
    )


def test_episode_becomes_a_sample_with_its_loss_mask() -> None:
    sample = _episode().to_sample(group_id=3)
    assert sample.loss_mask == [1, 1, 1, 0, 0, 1, 1] and sample.group_id == 3 and sample.reward == 1.0
    assert sample.num_model_tokens == 5
    batch = collate([sample, Sample([1], [5, 6], [-1.0, -2.0], 0.0, 4, 0)], pad_token_id=0)
    assert batch.completion_mask.tolist() == [[0, 0, 1, 1, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch.input_ids[0].tolist() == [1, 2, 10, 11, 12, 20, 21, 13, 14]
    assert batch.sampler_logprobs[0, 5:7].tolist() == [0.0, 0.0]
    packed = pack_rows(batch)  # packing keeps the gaps
    assert packed.completion_mask.tolist() == [[0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1]]
    with pytest.raises(ValueError, match="loss_mask has 1 entries for 2"):
        Sample([1], [5, 6], [-1.0, -2.0], 0.0, 0, 0, loss_mask=[1])


def test_last_token_is_the_last_model_token_after_gaps() -> None:
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0] * 8], dtype=torch.float32)
    assert _last_token(mask).tolist() == [[0, 0, 0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0] * 8]


def _with_and_without_gaps() -> tuple[AdvantageInput, AdvantageInput, torch.Tensor]:
    """The same two episodes' model tokens with environment tokens between turns (gapped) and
    without them (contiguous), and where the gapped rows' model tokens are."""
    gen = torch.Generator().manual_seed(0)
    gapped_mask = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 1], [0, 0, 1, 0, 1, 0, 1, 0]], dtype=torch.float32)
    n_model = gapped_mask.sum(-1).long().tolist()
    contiguous_mask = torch.zeros(2, 8)
    for i, n in enumerate(n_model):
        contiguous_mask[i, 1 : 1 + n] = 1
    values_model = torch.randn(2, 5, generator=gen)
    kl_model = torch.randn(2, 5, generator=gen) * 0.1

    def place(mask: torch.Tensor, model_values: torch.Tensor) -> torch.Tensor:
        out = torch.randn(mask.shape, generator=gen) * 100  # garbage outside the mask
        for i in range(2):
            out[i, mask[i].bool()] = model_values[i, : n_model[i]]
        return out

    rewards, groups = torch.tensor([1.0, -0.5]), torch.tensor([0, 1])

    def data(mask: torch.Tensor) -> AdvantageInput:
        token_rewards = place(mask, kl_model) * mask
        return AdvantageInput(rewards, groups, mask, token_rewards, place(mask, values_model))

    return data(gapped_mask), data(contiguous_mask), gapped_mask


@pytest.mark.parametrize("estimator", [gae_advantages, reinforce_pp_advantages])
def test_token_recursions_skip_environment_tokens(estimator) -> None:
    """GAE and REINFORCE++ returns on an episode with gaps equal those of the same model tokens
    laid out contiguously (gamma, lambda < 1, so a recursion through the gaps would differ), and
    are 0 on the environment's tokens."""
    cfg = AlgorithmConfig(gamma=0.9, lam=0.8, whiten_advantages=False)
    gapped, contiguous, mask = _with_and_without_gaps()
    adv_g, ret_g = estimator(gapped, cfg)
    adv_c, ret_c = estimator(contiguous, cfg)
    for i in range(2):
        on_g, on_c = mask[i].bool(), contiguous.mask[i].bool()
        assert torch.allclose(adv_g[i, on_g], adv_c[i, on_c], atol=1e-6)
        assert torch.allclose(ret_g[i, on_g], ret_c[i, on_c], atol=1e-6)
        assert (adv_g[i, ~on_g] == 0).all() and (ret_g[i, ~on_g] == 0).all()


def test_gae_across_a_gap_by_hand() -> None:
    """One row: model tokens at columns 1 and 4 (environment at 2-3), V = (0.5, 0.25), outcome 1,
    gamma = 1, lambda = 0.5: delta_4 = 1 - 0.25, delta_1 = 0 + V_4 - V_1 = -0.25, A_1 = -0.25 +
    0.5 * 0.75 = 0.125, A_4 = 0.75; returns A + V."""
    mask = torch.tensor([[0, 1, 0, 0, 1, 0]], dtype=torch.float32)
    values = torch.tensor([[9.0, 0.5, 9.0, 9.0, 0.25, 9.0]])
    data = AdvantageInput(torch.tensor([1.0]), torch.tensor([0]), mask, None, values)
    adv, ret = gae_advantages(data, AlgorithmConfig(gamma=1.0, lam=0.5, whiten_advantages=False))
    assert adv.tolist() == [[0, 0.125, 0, 0, 0.75, 0]]
    assert ret.tolist() == [[0, 0.625, 0, 0, 1.0, 0]]


# ---------------------------------------------------------------- on the tiny model


@pytest.fixture(scope="module")
def two_turn_samples(tiny_model_dir: Path) -> list[tuple[Sample, Sample]]:
    """Episodes built by hand with the hf engine: turn 1 sampled, 3 environment tokens appended,
    turn 2 sampled from the whole sequence. Each as the correct Sample (environment tokens masked
    out) and as a wrong one that scores the environment's tokens as the model's."""
    worker = RolloutWorker(ModelConfig(path=str(tiny_model_dir)), RolloutConfig())
    sampling = SamplingConfig(max_new_tokens=5)
    prompts = [[5, 6, 7], [8, 9, 10, 11], [13, 14]]
    env = [40, 41, 42]
    first = [g[0] for g in worker.generate(prompts, 1, sampling, seed=0)]
    second = [
        g[0]
        for g in worker.generate(
            [p + c.token_ids + env for p, c in zip(prompts, first, strict=True)], 1, sampling, seed=1
        )
    ]
    out = []
    for i, (p, a, b) in enumerate(zip(prompts, first, second, strict=True)):
        ids = a.token_ids + env + b.token_ids
        mask = [1] * len(a.token_ids) + [0] * len(env) + [1] * len(b.token_ids)
        logprobs = a.logprobs + [0.0] * len(env) + b.logprobs
        episode = Episode(p, ids, mask, logprobs, reward=float(i))
        wrong = Sample(p, ids, logprobs, float(i), i, 0)  # no loss mask: env tokens scored as sampled
        out.append((episode.to_sample(i), wrong))
    return out


def test_sampler_logprobs_match_on_model_tokens_only(tiny_model_dir: Path, two_turn_samples) -> None:
    """The learner's log-probs of an episode's model tokens equal the engine's; scoring the
    environment's tokens as the model's shows up as a large logprob_diff/sampler."""
    learner = Learner(
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(lr=0.0),
        AlgorithmConfig(),
        SamplingConfig(),
        seed=0,
    )
    right = [s for s, _ in two_turn_samples]
    for sample, row in zip(right, learner.completion_logprobs(right), strict=True):
        model = [lp for lp, m in zip(sample.sampler_logprobs, sample.loss_mask, strict=True) if m]
        assert torch.allclose(torch.tensor(model), torch.tensor(row), atol=1e-4)
    good = learner.train_step(right)["logprob_diff/sampler"]
    bad = learner.train_step([w for _, w in two_turn_samples])["logprob_diff/sampler"]
    assert good < 1e-4, good
    assert bad > 0.5, bad
