"""What a run's actors reserve on Ray, checked before any of them starts: a run that asks for more
CPUs or GPUs than Ray has fails at once naming the keys, instead of waiting forever."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rlft.config import RLFTConfig
from rlft.trainers.online import SetupError, check_resources, resource_demand


def _cfg(colocate: bool, reward_model: bool, workers: int = 1) -> RLFTConfig:
    cfg = RLFTConfig()
    cfg.cluster.colocate = colocate
    cfg.learner.num_workers = cfg.rollout.num_workers = workers
    cfg.learner.num_cpus_per_worker, cfg.rollout.num_cpus_per_worker = 1.5, 0.5
    cfg.learner.num_gpus_per_worker, cfg.rollout.num_gpus_per_worker = 1.0, 0.25
    if reward_model:
        cfg.reward.model.path = "some/reward-model"
        cfg.reward.model.num_cpus, cfg.reward.model.num_gpus = 1.0, 0.5
    return cfg


def _totals(demand: dict[str, tuple[float, float]]) -> tuple[float, float]:
    return sum(c for c, _ in demand.values()), sum(g for _, g in demand.values())


def test_demand_counts_every_actor() -> None:
    # Colocated: one bundle per learner of (1.5 + 0.5) CPUs and the learner's 1 GPU; RM outside.
    assert _totals(resource_demand(_cfg(colocate=True, reward_model=False, workers=2))) == (4.0, 2.0)
    assert _totals(resource_demand(_cfg(colocate=True, reward_model=True, workers=2))) == (5.0, 2.5)
    # Separate: 2 x (1.5 CPU, 1 GPU) learners + 2 x (0.5 CPU, 0.25 GPU) workers (+ the RM).
    assert _totals(resource_demand(_cfg(colocate=False, reward_model=False, workers=2))) == (4.0, 2.5)
    assert _totals(resource_demand(_cfg(colocate=False, reward_model=True, workers=2))) == (5.0, 3.0)


def test_check_names_the_keys_and_the_fix() -> None:
    demand = resource_demand(_cfg(colocate=True, reward_model=True))  # 3 CPUs, 1.5 GPUs
    check_resources(demand, {"CPU": 3.0, "GPU": 1.5})  # exactly enough
    with pytest.raises(SetupError, match=r"reserve 3 CPUs but Ray has 2") as err:
        check_resources(demand, {"CPU": 2.0, "GPU": 8.0})
    assert "1 for the reward model (reward.model.num_cpus" in str(err.value)
    assert "cluster.colocate=true" in str(err.value)
    assert "raise cluster.num_cpus to 3" in str(err.value)
    with pytest.raises(SetupError, match=r"reserve 1.5 GPUs but Ray has 0"):
        check_resources(demand, {"CPU": 8.0})


def test_colocated_run_with_a_reward_model_fails_fast_on_two_cpus(
    quickstart_args: Callable[..., list[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Learner + rollout worker fill the 2-CPU placement group; the reward model's CPU is not left.
    This used to wait for it forever; now it ends before any actor starts, naming the fix."""
    overrides = (
        "cluster.colocate=true",
        "cluster.num_cpus=2",
        f"reward.model.path={tiny_model_dir}",
    )
    cmd = [sys.executable, "-m", "rlft", *quickstart_args(tmp_path / "run", *overrides)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "reserve 3 CPUs but Ray has 2" in proc.stderr
    assert "reward.model.num_cpus" in proc.stderr


def test_preference_run_reserves_the_learners_only() -> None:
    """No rollout workers, no reward model and no placement group in a preference run."""
    cfg = _cfg(colocate=True, reward_model=True, workers=2)
    cfg.algorithm.kind = "preference"
    assert resource_demand(cfg) == {
        "learners (learner.num_cpus_per_worker, learner.num_gpus_per_worker)": (3.0, 2.0)
    }


def test_preference_run_that_asks_too_much_fails_fast(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A DPO learner that reserves 2 CPUs of a 1-CPU Ray ends before it starts, naming the key."""
    overrides = ("cluster.num_cpus=1", "learner.num_cpus_per_worker=2")
    cmd = [
        sys.executable,
        "-m",
        "rlft",
        "train",
        "recipe=dpo_quickstart",
        f"model.path={tiny_model_dir}",
        f"trainer.output_dir={tmp_path / 'run'}",
        "tracking.wandb.enabled=false",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "reserve 2 CPUs but Ray has 1" in proc.stderr
    assert "learner.num_cpus_per_worker" in proc.stderr
    assert "rollout" not in proc.stderr.split("reserve 2 CPUs", 1)[1]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
