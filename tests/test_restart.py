"""A run survives the death of a Ray actor: it restarts the actors and continues from its newest
checkpoint (trainer.max_restarts)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from rlft.cli import main
from rlft.tracking import read_metrics
from rlft.trainers import online


@pytest.fixture
def ray_session() -> Iterator[None]:
    """A Ray instance of the test's own, so the run joins it and the test can kill its actors."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _kill_a_rollout_worker_after(
    metrics: Path, steps: int, started: list[tuple[Any, list[Any]]], killed: list[float]
) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            ray.kill(started[0][1][0])
            killed.append(time.monotonic())
            return
        time.sleep(0.2)


def test_run_restarts_after_a_rollout_worker_is_killed(
    ray_session: None,
    quickstart_args: Callable[..., list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started: list[tuple[Any, list[Any]]] = []
    start_workers = online.start_workers

    def recording_start_workers(*args: Any) -> tuple[Any, list[Any]]:
        learner, workers = start_workers(*args)
        started.append((learner, workers))
        return learner, workers

    monkeypatch.setattr(online, "start_workers", recording_start_workers)
    out, steps = tmp_path / "run", 4
    killed: list[float] = []
    killer = threading.Thread(
        target=_kill_a_rollout_worker_after, args=(out / "metrics.jsonl", 2, started, killed), daemon=True
    )
    killer.start()
    args = quickstart_args(
        out,
        f"trainer.max_steps={steps}",
        "trainer.checkpoint_every=2",
        "trainer.max_restarts=1",
        "data.global_prompts_per_step=4",
    )
    start = time.monotonic()
    assert main(args) == 0
    killer.join(timeout=1)

    assert killed, "the worker was never killed"
    assert len(started) == 2  # the first actors, and those started after the death
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert [m["policy_version"] for m in metrics] == list(range(1, steps + 1))
    assert any("restart 1 of at most 1" in r.getMessage() for r in caplog.records)
    summaries = [line for line in capsys.readouterr().out.splitlines() if line.startswith("reward/mean over")]
    assert len(summaries) == 1 and summaries[0].startswith(f"reward/mean over {steps} steps")  # all of them
    print(f"restart test: {time.monotonic() - start:.1f} s")


def test_restarts_are_bounded(
    ray_session: None,
    quickstart_args: Callable[..., list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With trainer.max_restarts=0 the death of an actor ends the run with Ray's error."""
    start_workers = online.start_workers

    def start_and_kill(*args: Any) -> tuple[Any, list[Any]]:
        learner, workers = start_workers(*args)
        ray.kill(workers[0])
        return learner, workers

    monkeypatch.setattr(online, "start_workers", start_and_kill)
    args = quickstart_args(tmp_path / "run", "trainer.max_steps=2", "trainer.max_restarts=0")
    with pytest.raises(ray.exceptions.RayActorError):
        main(args)
