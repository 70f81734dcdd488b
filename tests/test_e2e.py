"""End to end through the `rlft` command on the offline tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlft.cli import main
from rlft.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONTRACT_METRICS = {
    "reward/mean",
    "reward/repeat_char/mean",
    "loss/policy",
    "kl",
    "entropy",
    "clip_frac",
    "response_len/mean",
    "timing/rollout_s",
    "timing/train_s",
    "timing/weight_sync_s",
    "throughput/tokens_per_s",
    "staleness",
}


def test_quickstart_on_ray_learns(
    tiny_model_dir: Path, quickstart_learns: Callable[..., list[dict]], tmp_path: Path
) -> None:
    """The real CLI in a subprocess, real Ray actors: reward rises by a clear margin."""
    steps = 150
    out = tmp_path / "run"
    metrics = quickstart_learns(out, steps)
    assert metrics[0].keys() >= CONTRACT_METRICS
    assert all(m["staleness"] == 0 for m in metrics)
    # every step the engine sampled with the learner's current weights (sync is real): measured 2.5e-7
    assert max(m["logprob_diff/sampler"] for m in metrics) < 1e-4
    assert metrics[-1]["policy_version"] == steps

    assert (out / "config.yaml").is_file()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {"step", "prompt", "completion", "reward", "policy_version"} <= samples[0].keys()
    final = load_file(out / "checkpoints" / f"step_{steps:08d}" / "policy" / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[k], initial[k]) for k in initial), "the policy did not change"


def test_reward_function_that_raises_does_not_kill_the_run(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def boom(prompts, completions, **columns):\n    raise RuntimeError('reward bug')\n")
    out = tmp_path / "run"
    fns = f"reward.functions=[rewards/synthetic.py:repeat_char,{bad}:boom]"
    args = quickstart_args(out, fns, "reward.weights=[1.0,1.0]", "cluster.mode=local", "trainer.max_steps=2")
    assert main(args) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert len(metrics) == 2
    samples_per_step = 16 * 16  # the quickstart recipe: 16 prompts x group_size 16
    assert all(m["reward/boom/errors"] == samples_per_step for m in metrics)
    assert all(m["reward/errors"] == samples_per_step for m in metrics)
    tracebacks = [
        r
        for r in caplog.records
        if r.name == "rlft.rewards" and "reward bug" in r.getMessage() + str(r.exc_text)
    ]
    assert len(tracebacks) == 1  # logged once, not every step


def test_missing_reward_file_fails_at_start(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys
) -> None:
    args = quickstart_args(tmp_path / "run", "reward.functions=[no/such/file.py:fn]", "cluster.mode=local")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no/such/file.py" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_dataset_without_the_reward_column_fails_at_start(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys
) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Repeat this digit: {i}"}) + "\n" for i in range(4)))
    args = quickstart_args(tmp_path / "run", f"data.path={data}", "cluster.mode=local")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "answer" in err and "repeat_char" in err


def test_resume_after_interruption_matches_uninterrupted_run(
    quickstart_args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """Steps 3-4 of a run stopped after step 2 and resumed equal those of a run never stopped."""
    common = ("cluster.mode=local", "trainer.checkpoint_every=2", "data.global_prompts_per_step=4")
    assert main(quickstart_args(tmp_path / "full", "trainer.max_steps=4", *common)) == 0
    assert main(quickstart_args(tmp_path / "cut", "trainer.max_steps=2", *common)) == 0
    assert main(quickstart_args(tmp_path / "cut", "trainer.max_steps=4", *common)) == 0
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed, strict=True):
        for key in ("reward/mean", "loss/policy", "kl", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "step_00000002",
        "step_00000004",
    ]


def test_resume_never_refuses_a_run_directory_with_checkpoints(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys
) -> None:
    common = ("cluster.mode=local", "data.global_prompts_per_step=2", "trainer.max_steps=1")
    assert main(quickstart_args(tmp_path / "run", *common)) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert main(quickstart_args(tmp_path / "run", *common, "trainer.resume=never", "trainer.seed=5")) == 2
    assert "trainer.resume=never" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # the earlier run's config is kept


def test_export_writes_a_plain_hugging_face_model(
    tiny_model_dir: Path, quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = ("cluster.mode=local", "data.global_prompts_per_step=2", "trainer.max_steps=1")
    assert main(quickstart_args(tmp_path / "run", *common)) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    assert main(["export", str(ckpt), "--to", str(tmp_path / "hf")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    trained = load_file(ckpt / "policy" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in trained:
            assert torch.equal(tensor, trained[name]), name
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (
        tokenizer("Repeat this digit: 3")["input_ids"]
        == AutoTokenizer.from_pretrained(tiny_model_dir)("Repeat this digit: 3")["input_ids"]
    )
    assert main(["export", str(ckpt), "--to", str(tmp_path / "hf")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_collective_weight_transport_in_the_loop(
    quickstart_args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """The bucketed gloo broadcast keeps the engine on the learner's weights step after step."""
    out = tmp_path / "run"
    overrides = ("weights.transport=collective", "weights.bucket_mb=0.1", "trainer.max_steps=3")
    cmd = [sys.executable, "-m", "rlft", *quickstart_args(out, *overrides, "cluster.num_cpus=2")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["policy_version"] for m in metrics] == [1, 2, 3]
    assert max(m["logprob_diff/sampler"] for m in metrics) < 1e-4
    assert all(m["weight_sync/bytes"] > 0 for m in metrics)
