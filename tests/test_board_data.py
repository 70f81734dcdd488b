"""rlft board's reading of run directories (no browser): incremental metrics, samples by step
through binary search, run status; the per-token data a run records with tracking.token_stats."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlft.board.runs import HEARTBEAT_S, MetricsFile, RunReader, SamplesFile, run_state
from rlft.trainers.run_status import STATUS_FILE


def _write_lines(path: Path, rows: list[dict], mode: str = "a") -> None:
    with path.open(mode) as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def test_metrics_are_read_incrementally_and_a_rewritten_file_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(path)
    assert metrics.rows() == []
    _write_lines(path, [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}])
    with path.open("a") as file:
        file.write('{"step": 3, "a"')  # a line being written: not read yet
    assert [r["step"] for r in metrics.rows()] == [1, 2]
    with path.open("a") as file:
        file.write(': 3.0, "b": 1}\n')
    assert [r["step"] for r in metrics.rows()] == [1, 2, 3]
    assert metrics.metric_names() == ["a", "b"]
    _write_lines(path, [{"step": 2, "a": 20.0}])  # step 2 logged again (resumed): the last row wins
    assert [(r["step"], r["a"]) for r in metrics.rows()] == [(1, 1.0), (2, 20.0), (3, 3.0)]
    _write_lines(path, [{"step": 1, "a": -1.0}], mode="w")  # shorter: read again from the start
    assert [(r["step"], r["a"]) for r in metrics.rows()] == [(1, -1.0)]


def test_samples_of_a_step_are_found_by_binary_search(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    samples = SamplesFile(path)
    assert samples.step_range() is None and samples.rows(1) == []
    steps = [1, 1, 2, 4, 4, 4, 7] + [9] * 50  # step 3, 5, 6, 8 logged nothing
    _write_lines(path, [{"step": s, "i": i, "pad": "x" * (i * 37 % 500)} for i, s in enumerate(steps)])
    with path.open("a") as file:
        file.write('{"step": 10, "i": ')  # being written
    assert samples.step_range() == (1, 9)
    for step in range(0, 12):
        expected = [i for i, s in enumerate(steps) if s == step]
        assert [r["i"] for r in samples.rows(step, limit=100)] == expected, step
    assert len(samples.rows(9, limit=8)) == 8


def _status(run_dir: Path, **fields: object) -> None:
    (run_dir / STATUS_FILE).write_text(json.dumps(fields))


def test_run_state_from_status_file_lock_file_and_heartbeat(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    old = time.time() - 10 * HEARTBEAT_S
    (run / "metrics.jsonl").write_text("")
    os.utime(run / "metrics.jsonl", (old, old))
    assert run_state(run, 3, 10)[0] == "stopped"  # no clue at all
    assert run_state(run, 10, 10)[0] == "finished"  # but its last step is logged
    os.utime(run / "metrics.jsonl")  # written just now, and no process to check: running
    assert run_state(run, 3, 10)[0] == "running"
    os.utime(run / "metrics.jsonl", (old, old))

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = os.uname().nodename
    _status(run, state="running", pid=dead.pid, host=host)
    os.utime(run / STATUS_FILE, (old, old))
    assert run_state(run, 3, 10)[0] == "crashed"  # killed outright: its process is gone
    assert run_state(run, 10, 10)[0] == "finished"
    _status(run, state="running", pid=os.getpid(), host=host)
    assert run_state(run, 3, 10)[0] == "running"
    for state in ("finished", "crashed", "interrupted"):
        _status(run, state=state, pid=dead.pid, host=host, error="boom")
        assert run_state(run, 3, 10) == (state, "boom")
    (run / STATUS_FILE).unlink()
    (run / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": host}))
    assert run_state(run, 3, 10)[0] == "running"  # another writer's lock naming a live process
    (run / "run.lock").write_text(str(dead.pid))
    assert run_state(run, 3, 10)[0] == "stopped"


def test_token_stats_hold_sampler_and_learner_logprobs_entropy_and_grpo_advantages(
    token_stats_run: Path,
) -> None:
    rows = [json.loads(line) for line in (token_stats_run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8 + [3] * 8
    for step in (1, 2, 3):
        for group in (0, 1):
            members = [r for r in rows if r["step"] == step and r["group"] == group]
            assert [r["index"] for r in members] == [4 * group + j for j in range(4)]
            rewards = [r["reward"] for r in members]
            mean = sum(rewards) / 4
            std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / 3)  # Bessel-corrected, as GRPO
            for r in members:
                stats, n = r["token_stats"], len(r["tokens"])
                assert set(stats) == {"sampler_logprob", "learner_logprob", "entropy", "advantage"}
                assert all(len(v) == n for v in stats.values()) and n > 0
                expected = 0.0 if std == 0 else (r["reward"] - mean) / (std + 1e-6)
                assert stats["advantage"] == pytest.approx([expected] * n, abs=1e-4)
                # The hf engine samples with the learner's weights: the gap is numerical noise.
                gaps = [
                    a - b for a, b in zip(stats["learner_logprob"], stats["sampler_logprob"], strict=True)
                ]
                assert max(map(abs, gaps)) < 1e-3
                assert all(0 < e <= math.log(512) + 1e-3 for e in stats["entropy"])  # tiny vocabulary
                assert r["rewards"]["repeat_char"] == pytest.approx(r["reward"])
    assert (json.loads((token_stats_run / STATUS_FILE).read_text()))["state"] == "finished"
    summary = RunReader(token_stats_run, "run").summary()
    assert (summary.status, summary.steps, summary.max_steps, summary.recipe) == (
        "finished",
        3,
        3,
        "quickstart",
    )


def test_token_stats_bytes_per_step(token_stats_run: Path) -> None:
    """What tracking.token_stats adds to samples.jsonl: about 50 bytes per completion token."""
    added = tokens = 0
    for line in (token_stats_run / "samples.jsonl").open():
        row = json.loads(line)
        extra = {"tokens": row["tokens"], "token_stats": row["token_stats"]}
        added += len(json.dumps(extra, ensure_ascii=False).encode())
        tokens += len(row["tokens"])
    print(f"token_stats: +{added / tokens:.1f} bytes per completion token ({tokens} tokens)")
    assert 20 < added / tokens < 80


def test_status_file_records_this_process_then_how_the_run_ended(tmp_path: Path) -> None:
    from rlft.trainers.run_status import mark_ended, mark_running, read_status, set_command

    mark_ended(tmp_path, "finished")  # no status.json: nothing to end (bad input before the run)
    assert read_status(tmp_path) is None
    set_command(["train", "recipe=quickstart"])
    mark_running(tmp_path)
    status = read_status(tmp_path)
    assert (status["state"], status["pid"], status["argv"]) == (
        "running",
        os.getpid(),
        ["train", "recipe=quickstart"],
    )
    assert run_state(tmp_path, 0, 10)[0] == "running"
    mark_ended(tmp_path, "interrupted")
    assert read_status(tmp_path)["state"] == "interrupted"
    assert run_state(tmp_path, 0, 10)[0] == "interrupted"
    _status(tmp_path, state="running", pid=os.getpid() + 1)  # another process's run: not ours to end
    mark_ended(tmp_path, "crashed", "boom")
    assert read_status(tmp_path)["state"] == "running"
