"""Offline preference training (DPO family, KTO) on the tiny model: data loading, the learner's
update, and whole runs through the CLI on a synthetic preference set built here."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from rlft.cli import main
from rlft.config import AlgorithmConfig, DataConfig, LearnerConfig, ModelConfig
from rlft.data.preference import (
    ExampleSampler,
    PreferencePair,
    UnpairedExample,
    load_preference_data,
)
from rlft.learner.preference import PreferenceLearner
from rlft.modeling import load_tokenizer
from rlft.tracking import read_metrics


def _digit_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``Repeat this digit: d``: chosen ``d d d d``, rejected four random other digits."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        d = rng.randrange(10)
        others = [str(x) for x in range(10) if x != d]
        rejected = " ".join(rng.choice(others) for _ in range(4))
        rows.append({"prompt": f"Repeat this digit: {d}", "chosen": f"{d} {d} {d} {d}", "rejected": rejected})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", _digit_rows(64))


def _run(tiny_model_dir: Path, out: Path, *extra: str) -> list[dict]:
    args = [
        "train",
        "recipe=dpo_quickstart",
        f"model.path={tiny_model_dir}",
        f"trainer.output_dir={out}",
        "cluster.mode=local",
        "tracking.wandb.enabled=false",
        "tracking.console=false",
        *extra,
    ]
    assert main(args) == 0
    return read_metrics(out / "metrics.jsonl")


def _mean(metrics: list[dict], key: str) -> float:
    return sum(m[key] for m in metrics) / len(metrics)


# --- data ------------------------------------------------------------------------------------------


def test_text_pairs_are_prompt_then_completion_then_eos(tiny_model_dir: Path, pairs_file: Path) -> None:
    tok = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    cfg = DataConfig(path=str(pairs_file), apply_chat_template=False)
    data = load_preference_data(cfg, tok, unpaired=False, max_prompt_tokens=64, max_completion_tokens=32)
    pair = data.examples[0]
    assert isinstance(pair, PreferencePair) and len(data.examples) == 64 and data.num_truncated == 0
    row = _digit_rows(1)[0]
    assert tok.decode(pair.prompt_ids) == row["prompt"]
    assert tok.decode(pair.chosen_ids) == row["chosen"] + tok.eos_token
    assert tok.decode(pair.rejected_ids) == row["rejected"] + tok.eos_token

    cut = load_preference_data(cfg, tok, unpaired=False, max_prompt_tokens=64, max_completion_tokens=3)
    assert cut.num_truncated == 128 and all(len(p.chosen_ids) == 3 for p in cut.examples)
    with pytest.raises(ValueError, match=r"model\.max_prompt_tokens"):
        load_preference_data(cfg, tok, unpaired=False, max_prompt_tokens=2, max_completion_tokens=32)

    unpaired = load_preference_data(cfg, tok, unpaired=True, max_prompt_tokens=64, max_completion_tokens=32)
    assert isinstance(unpaired.examples[0], UnpairedExample)
    assert [e.desirable for e in unpaired.examples[:4]] == [True, False, True, False]
    assert unpaired.examples[1].completion_ids == pair.rejected_ids


def test_chat_message_pairs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Both chat layouts: whole conversations (no prompt column), or a prompt column of messages
    with one-message answers. The prompt is the conversation before the last (assistant) message."""
    tok = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Repeat this digit: 7"}]
    good, bad = {"role": "assistant", "content": "7 7 7 7"}, {"role": "assistant", "content": "1 2 3"}
    whole = _write_jsonl(tmp_path / "whole.jsonl", [{"chosen": [*user, good], "rejected": [*user, bad]}])
    split = _write_jsonl(tmp_path / "split.jsonl", [{"prompt": user, "chosen": [good], "rejected": [bad]}])
    expected_prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    for path in (whole, split):
        data = load_preference_data(DataConfig(path=str(path)), tok, False, 64, 32)
        (pair,) = data.examples
        assert tok.decode(pair.prompt_ids) == expected_prompt
        assert tok.decode(pair.chosen_ids) == "7 7 7 7" + tok.eos_token
        assert tok.decode(pair.rejected_ids) == "1 2 3" + tok.eos_token

    mismatch = _write_jsonl(
        tmp_path / "mismatch.jsonl", [{"chosen": [*user, good], "rejected": [user[1], bad]}]
    )
    with pytest.raises(ValueError, match="share its prompt"):
        load_preference_data(DataConfig(path=str(mismatch)), tok, False, 64, 32)


def test_missing_columns_name_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "answer": "b"}])
    with pytest.raises(ValueError, match=r"data\.rejected_column='rejected'.*'answer'"):
        load_preference_data(DataConfig(path=str(path)), tok, False, 64, 32)
    path = _write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "completion": "a"}])
    with pytest.raises(ValueError, match=r"data\.label_column"):
        load_preference_data(DataConfig(path=str(path)), tok, True, 64, 32)


def test_sampler_order_is_seeded_and_resumable() -> None:
    full = ExampleSampler(7, seed=3)
    expected = full.sample(4) + full.sample(6)  # crosses an epoch boundary
    first = ExampleSampler(7, seed=3)
    first.sample(4)
    resumed = ExampleSampler(7, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert resumed.sample(6) == expected[4:]
    assert sorted(expected[:7]) == list(range(7))


# --- the learner -----------------------------------------------------------------------------------


def _learner(tiny_model_dir: Path, loss: str = "sigmoid", micro: int = 16) -> PreferenceLearner:
    return PreferenceLearner(
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(lr=1e-2, per_device_samples_per_micro_batch=micro),
        AlgorithmConfig(kind="preference", preference_loss=loss, beta=0.1),
        seed=0,
    )


def _examples(tiny_model_dir: Path, pairs_file: Path, unpaired: bool) -> list:
    tok = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    cfg = DataConfig(path=str(pairs_file), apply_chat_template=False)
    return load_preference_data(cfg, tok, unpaired, 64, 32).examples[:6]


@pytest.mark.parametrize("loss", ["sigmoid", "kto"])
def test_micro_batches_give_the_same_update_as_one_batch(
    tiny_model_dir: Path, pairs_file: Path, loss: str
) -> None:
    """1 micro-batch vs 3 (whole pairs each; KTO's KL estimate spans the whole batch). SGD with lr 1
    makes the weight change equal to the gradient."""
    batch = _examples(tiny_model_dir, pairs_file, unpaired=loss == "kto")
    one, three = _learner(tiny_model_dir, loss, micro=12), _learner(tiny_model_dir, loss, micro=4)
    for learner in (one, three):
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=1.0)
        learner.preference_step(batch)  # a first step, so that the policy differs from the reference
    before1, before3 = ({k: v.clone() for k, v in x.get_weights().tensors.items()} for x in (one, three))
    (m1, r1), (m3, r3) = one.preference_step(batch), three.preference_step(batch)
    assert torch.allclose(torch.tensor(r1), torch.tensor(r3), rtol=1e-4, atol=1e-6)
    for key in ("loss", "grad_norm", "rewards/margin", "logps/chosen"):
        assert m1[key] == pytest.approx(m3[key], rel=1e-4, abs=1e-6), key
    w1, w3 = one.get_weights().tensors, three.get_weights().tensors
    for name in w1:
        assert torch.allclose(before1[name] - w1[name], before3[name] - w3[name], rtol=1e-3, atol=1e-6), name
    assert any((before1[n] - w1[n]).abs().max() > 1e-4 for n in w1)
    assert m1["policy_version"] == 2


def test_kto_batch_with_one_label_has_no_nan_metrics(tiny_model_dir: Path, pairs_file: Path) -> None:
    """Only desirable examples: the undesirable side's means are absent, nothing is NaN."""
    desirable = [e for e in _examples(tiny_model_dir, pairs_file, unpaired=True) if e.desirable]
    assert desirable
    metrics, _ = _learner(tiny_model_dir, "kto").preference_step(desirable)
    assert all(not math.isnan(v) for v in metrics.values()), metrics
    assert "rewards/chosen" in metrics and "rewards/rejected" not in metrics
    assert "rewards/margin" not in metrics


def test_cached_reference_logps_equal_the_reference_pass(tiny_model_dir: Path, pairs_file: Path) -> None:
    batch = _examples(tiny_model_dir, pairs_file, unpaired=False)
    a, b = _learner(tiny_model_dir), _learner(tiny_model_dir)
    ref = a.reference_logps(batch)
    assert len(ref) == len(batch) and all(len(r) == 2 for r in ref)
    (ma, _), (mb, _) = a.preference_step(batch), b.preference_step(batch, ref)
    assert ma["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert mb["loss"] == pytest.approx(ma["loss"], abs=1e-6)
    assert mb["grad_norm"] == pytest.approx(ma["grad_norm"], rel=1e-4)


def test_reference_free_losses_load_no_reference(tiny_model_dir: Path) -> None:
    assert _learner(tiny_model_dir, "simpo").ref_model is None
    assert _learner(tiny_model_dir, "orpo").ref_model is None
    assert _learner(tiny_model_dir, "kto").ref_model is not None


# --- whole runs through the CLI --------------------------------------------------------------------


def test_dpo_starts_at_log2_and_raises_accuracy_and_margin(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dpo"
    metrics = _run(tiny_model_dir, out, f"data.path={pairs_file}", "trainer.max_steps=30")
    assert [m["step"] for m in metrics] == list(range(1, 31))
    # Measured (first 3 -> last 5 steps): accuracy 0.46 -> 1.0, margin 0.03 -> 2.35, loss 0.68 -> 0.10;
    # trainer.seed 1-4 give last-5 margins 1.8-2.1. Asserted: accuracy >= 0.9, margin >= 1.0.
    first, last = metrics[:3], metrics[-5:]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # fresh reference == policy
    assert metrics[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert _mean(last, "rewards/accuracy") >= _mean(first, "rewards/accuracy") + 0.5
    assert _mean(last, "rewards/accuracy") >= 0.9
    assert _mean(last, "rewards/margin") >= 1.0
    assert _mean(last, "loss") < 0.5 * math.log(2)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {"step", "prompt", "chosen", "rejected", "reward_chosen", "reward_rejected"} <= samples[0].keys()
    assert (out / "checkpoints" / "step_00000030" / "policy" / "model.safetensors").is_file()


def test_simpo_runs_without_reference_and_lowers_its_loss(
    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    metrics = _run(tiny_model_dir, tmp_path / "simpo", f"data.path={pairs_file}", "algorithm=simpo")
    assert _mean(metrics[-5:], "loss") < 0.5 * _mean(metrics[:3], "loss")
    assert _mean(metrics[-5:], "rewards/accuracy") >= 0.9


def test_kto_on_unpaired_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
        for i, r in enumerate(_digit_rows(64))
        for side in (("chosen",) if i % 3 else ("rejected",))  # 2/3 desirable, unpaired prompts
    ]
    data = _write_jsonl(tmp_path / "kto.jsonl", rows)
    metrics = _run(tiny_model_dir, tmp_path / "kto", f"data.path={data}", "algorithm=kto")
    assert metrics[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert _mean(metrics[-5:], "rewards/margin") > 0.5
    assert _mean(metrics[-5:], "loss") < _mean(metrics[:3], "loss")


def test_dataset_without_rejected_fails_at_start(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a"}])
    out = tmp_path / "run"
    args = ["train", "recipe=dpo_quickstart", f"model.path={tiny_model_dir}", f"data.path={data}"]
    assert main([*args, f"trainer.output_dir={out}", "cluster.mode=local"]) == 2
    err = capsys.readouterr().err
    assert "data.rejected_column" in err and "['prompt', 'chosen']" in err
    assert not (out / "metrics.jsonl").exists()


def test_resume_matches_uninterrupted_run(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    common = (f"data.path={pairs_file}", "trainer.checkpoint_every=2")
    full = _run(tiny_model_dir, tmp_path / "full", *common, "trainer.max_steps=4")
    _run(tiny_model_dir, tmp_path / "cut", *common, "trainer.max_steps=2")
    resumed = _run(tiny_model_dir, tmp_path / "cut", *common, "trainer.max_steps=4")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed, strict=True):
        for key in ("loss", "rewards/margin", "logps/chosen", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
