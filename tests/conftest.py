"""Shared pytest fixtures."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny model (tokenizer + random Qwen2 LM), built once per session outside ~/.cache."""
    from rlft.tiny_model import build_tiny_model  # imported here: it pulls in torch and transformers

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "tiny")


@pytest.fixture(scope="session")
def quickstart_args(tiny_model_dir: Path) -> Callable[..., list[str]]:
    """``rlft`` arguments for the quickstart recipe on the tiny model into ``out``, wandb off,
    followed by ``overrides``."""

    def args(out: Path, *overrides: str) -> list[str]:
        return [
            "train",
            "recipe=quickstart",
            f"model.path={tiny_model_dir}",
            f"trainer.output_dir={out}",
            "tracking.wandb.enabled=false",
            *overrides,
        ]

    return args


@pytest.fixture(scope="session")
def quickstart_learns(quickstart_args: Callable[..., list[str]]) -> Callable[..., list[dict[str, Any]]]:
    """Run ``rlft`` on the quickstart recipe in a subprocess (real CLI, real Ray) for ``steps``
    steps into ``out`` with ``overrides``; check that every step was logged and that the reward
    rose by the e2e margin (first-5 mean < 0.02, last-5 mean > first + 0.3: beyond the ~0.1 of a
    policy that prints one fixed digit, so the asked digit is being copied); return the metrics."""
    from rlft.tracking import read_metrics

    def run(out: Path, steps: int, *overrides: str, timeout: int = 600) -> list[dict[str, Any]]:
        cmd = [sys.executable, "-m", "rlft", *quickstart_args(out, f"trainer.max_steps={steps}", *overrides)]
        proc = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = read_metrics(out / "metrics.jsonl")
        assert [m["step"] for m in metrics] == list(range(1, steps + 1))
        first = sum(m["reward/mean"] for m in metrics[:5]) / 5
        last = sum(m["reward/mean"] for m in metrics[-5:]) / 5
        assert first < 0.02, first  # a random policy almost never writes the asked digit
        assert last > first + 0.3, (first, last)
        return metrics

    return run


@pytest.fixture(scope="session")
def token_stats_run(
    tmp_path_factory: pytest.TempPathFactory, quickstart_args: Callable[..., list[str]]
) -> Path:
    """A finished 3-step quickstart run (in-process, cluster.mode=local) recording token statistics
    of every sample: 2 groups of 4 per step, all 8 written to samples.jsonl. Its folder is the
    only run in its parent folder (for ``rlft board``)."""
    from rlft.cli import main

    out = tmp_path_factory.mktemp("board_runs") / "tiny"
    overrides = ("cluster.mode=local", "trainer.max_steps=3", "tracking.token_stats=true")
    shape = ("algorithm.group_size=4", "data.global_prompts_per_step=2", "tracking.samples_per_step=8")
    assert main(quickstart_args(out, *overrides, *shape)) == 0
    return out


@pytest.fixture(scope="session")
def async_resume_is_exact(quickstart_args: Callable[..., list[str]]) -> Callable[..., None]:
    """Check that ``steps`` steps in one go and ``cut`` steps then ``trainer.resume=auto`` to
    ``steps`` (quickstart with ``overrides``, trainer.async, seed 11, a checkpoint every ``cut``
    steps; in-process, into ``out``/full and ``out``/cut) log the same rewards, losses, staleness
    and samples at every step, bit for bit."""
    import json

    from rlft.cli import main
    from rlft.tracking import read_metrics

    keys = ("reward/mean", "loss/policy", "kl", "entropy", "async/staleness_max", "policy_version")

    def check(out: Path, steps: int, cut: int, *overrides: str) -> None:
        common = ("trainer.async=true", "trainer.seed=11", f"trainer.checkpoint_every={cut}", *overrides)
        for run, max_steps in (("full", steps), ("cut", cut), ("cut", steps)):
            assert main(quickstart_args(out / run, f"trainer.max_steps={max_steps}", *common)) == 0
        full, resumed = (read_metrics(out / run / "metrics.jsonl") for run in ("full", "cut"))
        assert [m["step"] for m in resumed] == list(range(1, steps + 1))
        for a, b in zip(full, resumed, strict=True):
            assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, a["step"]
        samples = [(out / run / "samples.jsonl").read_text().splitlines() for run in ("full", "cut")]
        assert [json.loads(row) for row in samples[0]] == [json.loads(row) for row in samples[1]]

    return check
