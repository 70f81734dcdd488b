"""Evaluation: the pass@k estimator, mean@k / pass@k metrics, evaluation during training and `rlft eval`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlft.cli import main
from rlft.evaluation import eval_metrics, pass_at_k, pass_ks
from rlft.tracking import read_metrics


def test_pass_at_k_hand_computed() -> None:
    # Chen et al. 2021 eq. 1: 1 - C(n - c, k) / C(n, k)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # C(3,2)=3, C(5,2)=10
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # only one wrong sample: any 2 hold a correct one
    assert pass_at_k(20, 5, 10) == pytest.approx(1 - 3003 / 184756)  # C(15,10), C(20,10)


def test_pass_at_k_matches_the_binomial_formula() -> None:
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_eval_metrics_hand_computed() -> None:
    nan = float("nan")
    rewards = torch.tensor([[1.0, 0.0, 0.5, nan], [0.0, 0.0, 0.0, 0.0]])
    metrics = eval_metrics(rewards, threshold=1.0)
    assert metrics["eval/mean@4"] == pytest.approx(1.5 / 7)  # NaN (no opinion) left out
    assert metrics["eval/pass@1"] == pytest.approx((1 / 4 + 0) / 2)
    assert metrics["eval/pass@2"] == pytest.approx((1 - 3 / 6 + 0) / 2)  # C(3,2)/C(4,2)
    assert metrics["eval/pass@4"] == pytest.approx((1 + 0) / 2)
    assert set(metrics) == {"eval/mean@4", "eval/pass@1", "eval/pass@2", "eval/pass@4"}
    assert eval_metrics(rewards, threshold=0.5)["eval/pass@1"] == pytest.approx((2 / 4) / 2)


def test_pass_ks() -> None:
    assert pass_ks(1) == [1]
    assert pass_ks(6) == [1, 2, 4, 6]
    assert pass_ks(8) == [1, 2, 4, 8]


EVAL = ("data.eval_size=6", "eval.k=4", "eval.sampling.max_new_tokens=8", "eval.pass_threshold=0.25")


def test_eval_during_training_and_rlft_eval_agree(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    common = ("cluster.mode=local", "data.global_prompts_per_step=4", "trainer.max_steps=3")
    assert main(quickstart_args(out, *common, *EVAL, "eval.every_steps=2")) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    evaluated = [m["step"] for m in metrics if "eval/mean@4" in m]
    assert evaluated == [2, 3]  # every 2 steps and after the last
    for m in metrics[1:]:
        assert m["eval/policy_version"] == m["step"]  # the weights just synced
        assert m["eval/num_prompts"] == 6
        assert 0 <= m["eval/pass@1"] <= m["eval/pass@2"] <= m["eval/pass@4"] <= 1
        assert 0 <= m["eval/mean@4"] <= 1
        assert "eval/reward/repeat_char/mean" in m

    # `rlft eval` on the last checkpoint: the same prompts, seed and weights as the step-3 evaluation.
    capsys.readouterr()
    ckpt = out / "checkpoints" / "step_00000003"
    written = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "cluster.mode=local", "--output", str(written)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(written.read_text())
    for key in ("eval/mean@4", "eval/pass@1", "eval/pass@4", "eval/response_len/mean"):
        assert printed[key] == pytest.approx(metrics[-1][key], abs=1e-6), key


def test_rlft_eval_on_a_model_directory(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(tiny_model_dir), "recipe=quickstart", "cluster.mode=local", *EVAL]
    assert main([*args, "eval.k=2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"eval/mean@2", "eval/pass@1", "eval/pass@2", "eval/num_prompts"}
    assert metrics["eval/policy_version"] == 0
    assert main([*args, "eval.k=2"]) == 0
    assert json.loads(capsys.readouterr().out)["eval/mean@2"] == metrics["eval/mean@2"]  # seeded


def test_rlft_eval_without_an_eval_split_says_how_to_get_one(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(tiny_model_dir), "recipe=quickstart", "cluster.mode=local", "data.eval_size=0"]
    assert main(args) == 2
    assert "data.eval_size" in capsys.readouterr().err
