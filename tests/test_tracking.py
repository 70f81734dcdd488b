"""Tests for rlft.tracking: jsonl files, fan-out, console output, reward summary, wandb mode."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from rlft.config import TrackingConfig
from rlft.tracking import (
    ConsoleTracker,
    JsonlTracker,
    Trackers,
    WandbTracker,
    make_trackers,
    read_metrics,
    resolve_wandb_mode,
    summarize_rewards,
)


def test_jsonl_writes_one_line_per_step_with_nan_as_null(tmp_path: Path) -> None:
    tracker = JsonlTracker(tmp_path)
    tracker.log({"reward/mean": 0.5, "loss/policy": np.float32(0.25), "n": np.int64(3)}, step=1)
    tracker.log({"reward/mean": math.nan, "kl": math.inf}, step=2)
    # Lines are flushed as they are written, before close.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    tracker.close()

    assert [json.loads(line) for line in lines] == [
        {"step": 1, "reward/mean": 0.5, "loss/policy": 0.25, "n": 3},
        {"step": 2, "reward/mean": None, "kl": None},
    ]
    assert read_metrics(tmp_path / "metrics.jsonl") == [json.loads(line) for line in lines]


def test_jsonl_samples_get_the_step(tmp_path: Path) -> None:
    with Trackers([JsonlTracker(tmp_path)]) as trackers:
        trackers.log_samples([{"prompt": "2+2=", "completion": "4", "reward": 1.0}], step=3)
        trackers.log_samples([{"prompt": "1+1=", "completion": "3", "reward": math.nan}], step=4)

    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert rows == [
        {"step": 3, "prompt": "2+2=", "completion": "4", "reward": 1.0},
        {"step": 4, "prompt": "1+1=", "completion": "3", "reward": None},
    ]


def test_read_metrics_after_a_crash_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x"')  # crashed mid-line
    tracker = JsonlTracker(tmp_path)  # resumed from the checkpoint after step 1
    tracker.log({"x": 20}, step=2)
    tracker.close()

    with pytest.warns(UserWarning, match="not valid JSON"):
        rows = read_metrics(path)
    assert rows == [{"step": 1, "x": 1}, {"step": 2, "x": 20}]


class _Recorder:
    def __init__(self, fail_on_close: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_on_close = fail_on_close

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append(f"log {step}")

    def log_samples(self, rows: list[dict], step: int) -> None:
        self.calls.append(f"samples {step}")

    def close(self) -> None:
        self.calls.append("close")
        if self.fail_on_close:
            raise RuntimeError("close failed")


def test_trackers_fan_out_and_close_all_even_if_one_raises() -> None:
    first, failing, last = _Recorder(), _Recorder(fail_on_close=True), _Recorder()
    with pytest.raises(RuntimeError, match="close failed"), Trackers([first, failing, last]) as trackers:
        trackers.log({"reward/mean": 1.0}, step=1)
        trackers.log_samples([], step=1)

    for tracker in (first, failing, last):
        assert tracker.calls == ["log 1", "samples 1", "close"]
    trackers.close()  # a second close does nothing
    assert last.calls[-1] == "close" and len(last.calls) == 3


def test_summarize_rewards() -> None:
    rewards = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 0.8, 0.7]
    summary = summarize_rewards(rewards)
    assert "over 10 steps" in summary
    assert "first 5 mean 0.2," in summary  # mean of 0.0..0.4
    assert "last 5 mean 0.7," in summary  # mean of 0.5, 0.6, 0.9, 0.8, 0.7
    assert "best 0.9 at step 8" in summary
    sparkline = summary.splitlines()[1].split()[0]
    assert len(sparkline) == 10 and sparkline[0] == "▁" and sparkline[7] == "█"


def test_summarize_rewards_short_run_with_nans_and_steps() -> None:
    summary = summarize_rewards([math.nan, 1.0, 3.0], steps=[11, 12, 13])
    assert "over 2 steps: first 2 mean 2, last 2 mean 2, best 3 at step 13" in summary
    assert summarize_rewards([math.nan]) == "reward/mean: no finite values logged"


def test_summarize_rewards_sparkline_is_bucketed() -> None:
    sparkline = summarize_rewards([float(i) for i in range(1000)]).splitlines()[1].split()[0]
    assert len(sparkline) == 40 and sparkline[0] == "▁" and sparkline[-1] == "█"


@pytest.mark.parametrize(
    ("mode", "env", "netrc_text", "expected"),
    [
        ("offline", {"WANDB_API_KEY": "k"}, None, "offline"),
        ("online", {}, None, "online"),
        ("disabled", {}, None, "disabled"),
        ("auto", {}, None, "offline"),
        ("auto", {"WANDB_API_KEY": "k"}, None, "online"),
        ("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, None, "disabled"),
        ("auto", {"WANDB_MODE": "online"}, None, "online"),
        ("auto", {}, "machine api.wandb.ai\n  login user\n  password abc\n", "online"),
        ("auto", {}, "machine github.com\n  login user\n  password abc\n", "offline"),
        (
            "auto",
            {"WANDB_BASE_URL": "https://wandb.corp:8080"},
            "machine wandb.corp:8080 password k\n",
            "online",
        ),
        ("auto", {}, "machine api.wandb.ai password\n", "offline"),  # malformed file
    ],
)
def test_resolve_wandb_mode(
    tmp_path: Path, mode: str, env: dict[str, str], netrc_text: str | None, expected: str
) -> None:
    netrc_path = tmp_path / ".netrc"
    if netrc_text is not None:
        netrc_path.write_text(netrc_text)
    assert resolve_wandb_mode(mode, env, netrc_path) == expected


def test_resolve_wandb_mode_rejects_unknown_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tracking\.wandb\.mode"):
        resolve_wandb_mode("onlin", {}, tmp_path / ".netrc")


def test_console_tracker_without_a_terminal_prints_one_line_per_step() -> None:
    output = io.StringIO()
    tracker = ConsoleTracker(total_steps=3, console=Console(file=output, force_terminal=False, width=60))
    for step, reward in enumerate([0.1, 0.5, 0.3], start=1):
        tracker.log({"reward/mean": reward, "kl": 0.01, "throughput/tokens_per_s": 1234.5}, step)
    tracker.log_samples([{"prompt": "p", "completion": "c"}], step=3)
    tracker.close()

    lines = output.getvalue().splitlines()
    step_lines = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in step_lines] == ["1/3", "2/3", "3/3"]
    assert "reward 0.5  kl 0.01  tok/s 1234" in step_lines[1]
    assert "\x1b" not in output.getvalue()  # no cursor movement or colour codes
    assert "best 0.5 at step 2" in output.getvalue()
    assert len(lines) <= len(step_lines) + 3  # plus the final bar and the two-line summary


def test_make_trackers_builds_the_enabled_ones(tmp_path: Path) -> None:
    cfg = TrackingConfig(console=False)
    cfg.wandb.enabled = False
    trackers = make_trackers(cfg, tmp_path, total_steps=2, start_step=0, config_dict={})
    assert [type(tracker) for tracker in trackers.trackers] == [JsonlTracker]
    trackers.close()


def test_wandb_tracker_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("CONFIG_DIR", "CACHE_DIR", "DATA_DIR"):
        monkeypatch.setenv(f"WANDB_{variable}", str(tmp_path / variable.lower()))
    run_dir = tmp_path / "run"
    tracker = WandbTracker(run_dir, {"algorithm": {"name": "grpo"}}, project="rlft-test", mode="offline")
    tracker.log({"reward/mean": 0.1, "loss/policy": math.nan}, step=1)
    tracker.log_samples([{"prompt": "p", "completion": "c", "reward": None}, {"reward": 1.0}], step=1)
    tracker.log({"reward/mean": 0.2}, step=2)
    tracker.close()

    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
