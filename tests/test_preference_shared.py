"""learner.share_prompt: a preference pair as one row with its prompt computed once gives the
log-probabilities, losses and gradients of the two separate rows (tiny model)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from rlft.cli import load_config
from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig
from rlft.data.preference import PreferencePair
from rlft.learner.batch import SharedPromptRows, collate_shared_prompt
from rlft.learner.preference import PreferenceLearner

S = SharedPromptRows


def test_layout_by_hand() -> None:
    """Pair 0: prompt 5 6 7, chosen 8 9, rejected 10. Pair 1: prompt 1, chosen 2, rejected 3 4 5."""
    rows = collate_shared_prompt([([5, 6, 7], [8, 9], [10]), ([1], [2], [3, 4, 5])], pad_token_id=0)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9, 7, 10], [1, 2, 1, 3, 4, 5, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 0, 1, 2, 3, 0]]
    P, E, C, R, X = S.PROMPT, S.PROMPT_END, S.CHOSEN, S.REJECTED, S.PAD
    assert rows.segments.tolist() == [[P, P, E, C, C, R, R], [E, C, R, R, R, R, X]]
    # Scored: the completions' tokens; the copy of the prompt's last token (column 5 / 2) is not.
    assert rows.score_mask.tolist() == [[0, 0, 0, 1, 1, 0, 1], [0, 1, 0, 1, 1, 1, 0]]
    # Row 0, key by key (1 = attends): the copy (query 5) sees prompt tokens 0-1 and itself, not
    # the prompt's last token (2) nor the chosen side; the rejected token sees the same plus itself.
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 1, 1],
    ]
    assert rows.attention_bias(torch.bool)[0, 0].int().tolist() == expected
    additive = rows.attention_bias(torch.float32)[0, 0]
    assert torch.equal(additive == 0, torch.tensor(expected, dtype=torch.bool))
    assert (additive[additive != 0] == torch.finfo(torch.float32).min).all()
    # Sums per sequence: chosen, rejected, chosen, rejected.
    values = torch.arange(14.0).view(2, 7)
    assert rows.per_sequence(values).tolist() == [3 + 4, 6, 8 + 0, 10 + 11 + 12]
    assert rows.select(torch.tensor([1])).input_ids.tolist() == [[1, 2, 1, 3, 4, 5]]


def test_segment_index_by_hand() -> None:
    """The same pairs as two attention segments each (flat index = row * 7 + column): prompt +
    chosen over itself; copy + rejected over the prompt without its last token, then itself."""
    rows = collate_shared_prompt([([5, 6, 7], [8, 9], [10]), ([1], [2], [3, 4, 5])], pad_token_id=0)
    index = rows.segment_index()
    assert index["q_index"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert index["k_index"].tolist() == [0, 1, 2, 3, 4, 0, 1, 5, 6, 7, 8, 9, 10, 11, 12]
    assert index["cu_q"].tolist() == [0, 5, 7, 9, 13]
    assert index["cu_k"].tolist() == [0, 5, 9, 11, 15]
    assert (index["max_q"], index["max_k"]) == (5, 5)


def test_empty_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match=r"learner\.share_prompt=false"):
        collate_shared_prompt([([], [1], [2])], pad_token_id=0)


def _learner(
    tiny_model_dir: Path, share: bool, micro: int = 16, attention: str = "auto", dtype: str = "float32"
) -> PreferenceLearner:
    return PreferenceLearner(
        ModelConfig(path=str(tiny_model_dir), dtype=dtype),
        LearnerConfig(
            lr=1e-2, per_device_samples_per_micro_batch=micro, share_prompt=share, packed_attention=attention
        ),
        AlgorithmConfig(kind="preference", preference_loss="sigmoid", beta=0.1),
        seed=0,
    )


def _pairs(n: int = 6, seed: int = 0) -> list[PreferencePair]:
    """Random token pairs of uneven lengths, one with a one-token prompt."""
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, 500) for _ in range(rng.randint(lo, hi))]

    pairs = [PreferencePair(ids(2, 12), ids(1, 9), ids(1, 9)) for _ in range(n)]
    pairs[0].prompt_ids = pairs[0].prompt_ids[:1]
    return pairs


@pytest.mark.parametrize("attention", ["mask", "varlen"])
def test_shared_prompt_gives_the_two_row_logps_and_update(tiny_model_dir: Path, attention: str) -> None:
    """Per sequence the policy and reference log-probs equal the two-row ones; one DPO step (the
    policy first moved off the reference) gives the same loss, rewards and, with SGD at lr 1, the
    same gradient; 1 vs 3 micro-batches too. ``mask``: the model's sdpa with the [L, L] mask;
    ``varlen``: two attention segments per pair (on the CPU one sdpa per segment)."""
    shared = _learner(tiny_model_dir, True, attention=attention)
    shared3 = _learner(tiny_model_dir, True, micro=4, attention=attention)  # 2 pairs per micro-batch
    rows = _learner(tiny_model_dir, False)
    assert shared.segment_attention == (attention == "varlen")
    pairs = _pairs()
    assert isinstance(shared._collate(pairs), SharedPromptRows)
    for reference in (False, True):
        a = shared._sequence_logps(shared._collate(pairs), reference)
        b = rows._sequence_logps(rows._collate(pairs), reference)
        assert a.shape == b.shape == (2 * len(pairs),)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()
    learners = (shared, rows, shared3)
    for learner in learners:
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=1.0)
        learner.preference_step(pairs)
    before = [{k: v.clone() for k, v in x.get_weights().tensors.items()} for x in learners]
    (ma, ra), (mb, rb), (mc, rc) = (x.preference_step(pairs) for x in learners)
    for key in ("loss", "grad_norm", "rewards/margin", "logps/chosen", "logps/rejected"):
        assert ma[key] == pytest.approx(mb[key], rel=1e-4, abs=1e-6), key
        assert mc[key] == pytest.approx(mb[key], rel=1e-4, abs=1e-6), key
    assert torch.allclose(torch.tensor(ra), torch.tensor(rb), rtol=1e-4, atol=1e-6)
    assert torch.allclose(torch.tensor(rc), torch.tensor(rb), rtol=1e-4, atol=1e-6)
    weights = [x.get_weights().tensors for x in learners]
    for name in weights[1]:
        change = before[1][name] - weights[1][name]
        for i in (0, 2):
            assert torch.allclose(before[i][name] - weights[i][name], change, rtol=1e-3, atol=1e-6), name
    assert any((before[1][n] - weights[1][n]).abs().max() > 1e-4 for n in weights[1])


def test_eager_attention_takes_the_additive_mask(tiny_model_dir: Path) -> None:
    shared, rows = _learner(tiny_model_dir, True, attention="mask"), _learner(tiny_model_dir, False)
    for learner in (shared, rows):
        learner.model.set_attn_implementation("eager")
        learner.ref_model.set_attn_implementation("eager")
    pairs = _pairs(seed=1)
    a = shared._sequence_logps(shared._collate(pairs))
    b = rows._sequence_logps(rows._collate(pairs))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()


def test_rows_longer_than_a_sliding_window_are_refused(tiny_model_dir: Path) -> None:
    shared = _learner(tiny_model_dir, True)
    config = shared.model.config
    config.sliding_window, config.layer_types = 8, ["sliding_attention"] * config.num_hidden_layers
    with pytest.raises(ValueError, match="sliding window"):
        shared._sequence_logps(shared._collate(_pairs()))


def test_packing_with_shared_prompts_is_a_config_error(tiny_model_dir: Path) -> None:
    args = ["recipe=dpo_quickstart", f"model.path={tiny_model_dir}", "learner.packing=true"]
    with pytest.raises(ValueError, match=r"learner\.share_prompt=false"):
        load_config(args)
    load_config([*args, "learner.share_prompt=false"])
    load_config(["recipe=quickstart", f"model.path={tiny_model_dir}", "learner.packing=true"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs a GPU")
def test_flash_segments_are_bottom_right_causal_on_a_gpu() -> None:
    """The flash varlen kernel (CUDA, bf16) attends as the CPU path's explicit masks do when a
    segment has fewer queries than keys (the rejected side: query j sees lk - lq + j + 1 keys),
    on random grouped-query inputs; top-left alignment would be off by O(1)."""
    from rlft.attention import _segment_attention

    g = torch.Generator().manual_seed(0)
    lq, lk = [5, 3, 7, 1], [5, 9, 7, 4]
    q = torch.randn(sum(lq), 14, 64, generator=g)
    k, v = (torch.randn(sum(lk), 2, 64, generator=g) for _ in range(2))

    def bounds(lengths: list[int]) -> torch.Tensor:
        return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)

    args = (bounds(lq), bounds(lk), max(lq), max(lk), 0.125)
    expected = _segment_attention(q, k, v, *args)
    cuda = [t.cuda().bfloat16() for t in (q, k, v)] + [a.cuda() if torch.is_tensor(a) else a for a in args]
    got = _segment_attention(*cuda).float().cpu()
    error = (got - expected).abs().max().item()
    print(f"flash segments vs masks: max |diff| {error:.2e}")
    assert error < 3e-2
    second = [t.transpose(0, 1) for t in (q[5:8], k[5:14], v[5:14])]  # 3 queries over 9 keys
    top_left = torch.nn.functional.scaled_dot_product_attention(*second, is_causal=True, enable_gqa=True)
    top_left = top_left.transpose(0, 1)
    assert (top_left - expected[5:8]).abs().max() > 0.3
