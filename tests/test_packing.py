"""Sequence packing and token-budget micro-batches: same loss and gradients as padded batches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from rlft.attention import use_varlen_attention
from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.data.preference import PreferencePair
from rlft.learner.batch import Sample, collate, pack_rows, plan_micro_batches
from rlft.learner.learner import Learner
from rlft.learner.preference import PreferenceLearner
from rlft.modeling import causal_lm_logprobs, load_model


def _samples(n: int = 12, seed: int = 0) -> list[Sample]:
    """Prompts of 1-6 and completions of 1-10 random tokens, groups of 4, random rewards."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        completion = [rng.randrange(400) for _ in range(rng.randint(1, 10))]
        prompt = [rng.randrange(400) for _ in range(rng.randint(1, 6))]
        out.append(Sample(prompt, completion, [-rng.random()] * len(completion), rng.random(), i // 4, 0))
    return out


# --- planning and layout -------------------------------------------------------------------------


def test_sample_count_micro_batches_are_consecutive_runs() -> None:
    assert plan_micro_batches([3] * 7, max_samples=3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_micro_batches([3] * 6, max_samples=3, unit=2) == [[0, 1], [2, 3], [4, 5]]  # whole pairs


@pytest.mark.parametrize("packed", [True, False])
def test_token_budget_micro_batches_cover_every_row_once_within_budget(packed: bool) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(50)] + [70]  # one row over the budget
    plan = plan_micro_batches(lengths, max_samples=4, max_tokens=64, packed=packed)
    assert sorted(i for mb in plan for i in mb) == list(range(len(lengths)))
    for mb in plan:
        sizes = [lengths[i] for i in mb]
        cost = sum(sizes) if packed else len(sizes) * max(sizes)
        assert cost <= 64 or mb == [50], (mb, cost)
        assert mb == sorted(mb)
    # first-fit decreasing packs tightly: at most one micro-batch more than the volume bound
    if packed:
        assert len(plan) <= -(-sum(lengths[:50]) // 64) + 2
    pairs = plan_micro_batches(lengths[:50], max_samples=4, max_tokens=64, packed=packed, unit=2)
    assert all(len(mb) % 2 == 0 and all(mb[k] + 1 == mb[k + 1] for k in range(0, len(mb), 2)) for mb in pairs)


def test_pack_restarts_positions_and_unpacks_to_the_padded_layout() -> None:
    batch = collate([Sample([1, 2], [3, 4, 5], [0.0] * 3, 0.0, 0, 0), Sample([6], [7], [0.0], 0.0, 1, 0)], 0)
    packed = pack_rows(batch)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert packed.completion_mask.tolist() == [[0, 0, 1, 1, 1, 0, 1]]
    assert packed.cu_seq_lens.tolist() == [0, 5, 7] and packed.max_length == 5
    assert torch.equal(packed.unpack(packed.input_ids), batch.input_ids * batch.attention_mask)
    with pytest.raises(ValueError, match="non-empty prompt"):
        pack_rows(collate([Sample([], [3, 4], [0.0] * 2, 0.0, 0, 0)], 0))


# --- equality with padded batches ------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["mask", "varlen"])
def test_packed_rows_give_the_padded_logprobs_and_attention_does_not_cross_samples(
    tiny_model_dir: Path, attention: str
) -> None:
    """float64 tiny model: a packed row's logprobs and parameter gradients equal the padded
    batch's, with transformers' sdpa and the block mask it derives from the position ids, and
    with rlft's varlen attention (its per-sample path on the CPU). Control: the same packed row
    with a plain all-ones attention mask (attention across samples) gives different logprobs,
    so the equality is not vacuous."""
    model = load_model(ModelConfig(path=str(tiny_model_dir))).double().eval()
    batch = collate(_samples(), 0)
    padded, _ = causal_lm_logprobs(
        model, batch.input_ids, batch.completion_mask, attention_mask=batch.attention_mask, chunk_tokens=16
    )
    padded_grads = torch.autograd.grad((padded * padded.detach().exp()).sum(), list(model.parameters()))
    packed = pack_rows(batch)
    if attention == "varlen":
        use_varlen_attention(model)
    row, _ = causal_lm_logprobs(
        model, packed.input_ids, packed.completion_mask, **packed.forward_kwargs(), chunk_tokens=16
    )
    unpacked = packed.unpack(row)
    assert torch.allclose(unpacked, padded, rtol=0, atol=1e-12)
    grads = torch.autograd.grad((unpacked * unpacked.detach().exp()).sum(), list(model.parameters()))
    for g, r in zip(grads, padded_grads, strict=True):
        assert torch.allclose(g, r, rtol=0, atol=1e-11)
    if attention == "varlen":
        return
    crossing, _ = causal_lm_logprobs(
        model,
        packed.input_ids,
        packed.completion_mask,
        attention_mask=torch.ones_like(packed.input_ids),
        position_ids=packed.position_ids,
    )
    assert (packed.unpack(crossing) - padded).abs().max() > 1e-3


def _learner(tiny_model_dir: Path, loss_agg: str, **learner_kwargs: object) -> Learner:
    """A float64 learner with beta > 0 (reference forward too) and SGD at lr 1, so the weight
    change equals the gradient."""
    learner = Learner(
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(**learner_kwargs),
        AlgorithmConfig(beta=0.1, loss_agg=loss_agg),
        SamplingConfig(temperature=0.8, max_new_tokens=10),
        seed=0,
    )
    learner.model.double()
    learner.ref_model.double()
    learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=1.0)
    return learner


def _update(learner: Learner, samples: list[Sample]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    before = {k: v.clone() for k, v in learner.model.named_parameters()}
    metrics = learner.train_step(samples)
    return metrics, {k: before[k] - v.detach() for k, v in learner.model.named_parameters()}


@pytest.mark.parametrize(
    ("loss_agg", "attention"),
    [
        ("token_mean", "mask"),
        ("seq_mean_token_mean", "mask"),
        ("seq_mean_token_sum", "mask"),
        ("seq_mean_token_sum_norm", "mask"),
        ("seq_mean_token_mean", "varlen"),
    ],
)
def test_packed_and_padded_train_steps_give_the_same_loss_and_gradients(
    tiny_model_dir: Path, loss_agg: str, attention: str
) -> None:
    """Padded micro-batches of 5 samples vs packed micro-batches by a 40-token budget: same
    loss, KL, entropy and gradient (= SGD weight change) for every aggregation."""
    samples = _samples()
    m_pad, g_pad = _update(_learner(tiny_model_dir, loss_agg, per_device_samples_per_micro_batch=5), samples)
    packed = _learner(
        tiny_model_dir, loss_agg, packing=True, max_tokens_per_micro_batch=40, packed_attention=attention
    )
    assert len(packed._micro_batches(collate(samples, 0))) > 2
    m_pack, g_pack = _update(packed, samples)
    for key in ("loss/policy", "kl", "entropy", "grad_norm", "clip_frac"):
        assert m_pack[key] == pytest.approx(m_pad[key], rel=1e-9, abs=1e-12), key
    for name, g in g_pad.items():
        assert torch.allclose(g_pack[name], g, rtol=1e-9, atol=1e-12), name
    assert max(g.abs().max() for g in g_pad.values()) > 1e-3


@pytest.mark.parametrize("packing", [False, True])
def test_token_budget_micro_batches_give_the_same_update_as_one_batch(
    tiny_model_dir: Path, packing: bool
) -> None:
    samples = _samples()
    _, whole = _update(_learner(tiny_model_dir, "token_mean", per_device_samples_per_micro_batch=12), samples)
    split = _learner(tiny_model_dir, "token_mean", packing=packing, max_tokens_per_micro_batch=30)
    assert len(split._micro_batches(collate(samples, 0))) >= 4
    _, parts = _update(split, samples)
    for name, g in whole.items():
        assert torch.allclose(parts[name], g, rtol=1e-9, atol=1e-12), name


def test_packed_dpo_step_equals_the_padded_one(tiny_model_dir: Path) -> None:
    """A DPO step with packing and token-budget micro-batches (whole pairs) gives the padded
    step's loss, implicit rewards and gradient (float64, SGD at lr 1)."""
    rng = random.Random(1)
    pairs = [
        PreferencePair(
            [rng.randrange(400) for _ in range(rng.randint(1, 5))],
            [rng.randrange(400) for _ in range(rng.randint(1, 8))],
            [rng.randrange(400) for _ in range(rng.randint(1, 8))],
        )
        for _ in range(6)
    ]
    updates = []
    for kwargs in (
        {"per_device_samples_per_micro_batch": 4},
        {"packing": True, "max_tokens_per_micro_batch": 24},
    ):
        learner = PreferenceLearner(
            ModelConfig(path=str(tiny_model_dir)),
            LearnerConfig(**kwargs),
            AlgorithmConfig(kind="preference", preference_loss="sigmoid", beta=0.1),
            seed=0,
        )
        learner.model.double()
        learner.ref_model.double()
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=1.0)
        learner.preference_step(pairs)  # a first step, so that the policy differs from the reference
        before = {k: v.clone() for k, v in learner.model.named_parameters()}
        metrics, rewards = learner.preference_step(pairs)
        change = {k: before[k] - v.detach() for k, v in learner.model.named_parameters()}
        updates.append((metrics, torch.tensor(rewards), change))
    (m_pad, r_pad, g_pad), (m_pack, r_pack, g_pack) = updates
    assert m_pack["loss"] == pytest.approx(m_pad["loss"], rel=1e-9)
    assert torch.allclose(r_pack, r_pad, rtol=1e-9, atol=1e-12)
    for name, g in g_pad.items():
        assert torch.allclose(g_pack[name], g, rtol=1e-9, atol=1e-12), name
