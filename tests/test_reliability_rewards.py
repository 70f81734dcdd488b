"""Issue 15 (reliability), item 7: reward functions' output is captured, and one that fails on
every sample for reward.max_failed_steps steps stops the run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from rlft.cli import main
from rlft.errors import RunFailed
from rlft.rewards import RewardManager
from rlft.tracking import read_metrics

LOUD = """
import os, sys

def loud(prompts, completions, **columns):
    sys.stdout.write("x" * (10 << 20))
    sys.stdout.flush()
    os.write(2, b"e" * (10 << 20) + b"\\nthe end of the noise\\n")
    return [1.0] * len(prompts)
"""


def test_reward_output_is_captured_not_printed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """20 MiB printed per call (stdout and stderr) never reaches the console; its size is a metric
    and its tail is logged once."""
    (tmp_path / "loud.py").write_text(LOUD)
    with RewardManager([f"{tmp_path}/loud.py:loud"], timeout_s=60) as manager:
        for _ in range(2):
            rewards, metrics = manager.score(["p"] * 4, ["c"] * 4, {})
            assert rewards == [1.0] * 4
            assert metrics["reward/loud/output_bytes"] == (20 << 20) + len("\nthe end of the noise\n")
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 10_000
    logged = [r.getMessage() for r in caplog.records if "printed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].rstrip().endswith("the end of the noise")
    assert len(logged[0]) < 2_000


def test_a_function_failing_every_sample_stops_after_max_failed_steps(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(
        "def flaky(prompts, completions, ok, **columns):\n"
        "    if not all(ok):\n"
        "        raise RuntimeError('the judge is down')\n"
        "    return [1.0] * len(prompts)\n"
    )
    with RewardManager([f"{tmp_path}/flaky.py:flaky"], max_failed_steps=3, timeout_s=60) as manager:
        for ok in (False, False, True, False, False):  # a good step resets the count
            manager.score(["p"] * 2, ["c"] * 2, {"ok": [ok] * 2})
        with pytest.raises(RunFailed) as raised:
            manager.score(["p"] * 2, ["c"] * 2, {"ok": [False] * 2})
    message = str(raised.value)
    assert message.startswith(
        f"reward function 'flaky' ({tmp_path}/flaky.py:flaky) failed on every sample of 3 steps in a row "
        "(reward.max_failed_steps=3); its last error: raised RuntimeError: the judge is down"
    )
    assert "reward.max_failed_steps=0" in message


def test_run_stops_with_one_error_when_a_reward_function_always_fails(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def boom(prompts, completions, **columns):\n    raise RuntimeError('reward bug')\n")
    out = tmp_path / "run"
    args = quickstart_args(
        out,
        f"reward.functions=[{bad}:boom]",
        "cluster.mode=local",
        "trainer.max_steps=20",
        "data.global_prompts_per_step=2",
        "algorithm.group_size=4",
    )
    with caplog.at_level(logging.ERROR):
        assert main(args) == 1
    err = capsys.readouterr().err
    assert "rlft: error: reward function 'boom'" in err
    assert "failed on every sample of 3 steps in a row (reward.max_failed_steps=3)" in err
    assert "its last error: raised RuntimeError: reward bug" in err
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2]
