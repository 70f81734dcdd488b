"""A process killed (SIGKILL) while it writes a checkpoint leaves the previous one usable, and a
killed re-save of the same step loses nothing. The writer is held at the moment of interest by the
``RLFT_TEST_CHECKPOINT_PAUSE`` hook and killed there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rlft.trainers import checkpoint

ROOT = Path(__file__).resolve().parents[1]

# Saves checkpoints of the steps in argv[2:] into the run argv[1]; the "learner" writes one file
# holding its step and the save's ordinal (so a test can tell an old save of a step from a new one).
_WRITER = """
import sys
from pathlib import Path
from rlft.trainers.checkpoint import save_checkpoint
run = Path(sys.argv[1])
for n, step in enumerate(map(int, sys.argv[2:])):
    def write(d, tag=f"{step}/{n}"):
        (d / "learner.txt").write_text(tag)
    save_checkpoint(run, step, {"tag": f"{step}/{n}"}, write, keep=2)
"""


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fails if it exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the process ended (rc {proc.returncode}) before the kill point"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _saves(run: Path, *steps: int, pause: str | None = None) -> subprocess.Popen:
    env = _env(**({checkpoint.PAUSE_ENV: pause} if pause else {}))
    cmd = [sys.executable, "-c", _WRITER, str(run), *map(str, steps)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def _tag(ckpt: Path) -> str:
    return json.loads((ckpt / "trainer_state.json").read_text())["tag"]


def test_kill_during_a_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    root = checkpoint.checkpoint_dir(tmp_path)
    proc = _saves(tmp_path, 1, 2, 3, pause="3:partial")
    _kill_when(proc, lambda: any(root.glob(".tmp-step_00000003-*/learner.txt")))
    assert checkpoint.latest_checkpoint(tmp_path) == root / "step_00000002"
    assert checkpoint.checkpoint_to_resume("auto", tmp_path) == root / "step_00000002"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002"]  # leftovers gone


def test_kill_while_a_checkpoint_of_the_same_step_is_replaced_keeps_that_step(tmp_path: Path) -> None:
    """Re-saving step 2 (as after resuming from step 1) moves the old step 2 aside first; killed
    before the new one is in place, resuming finds the old step 2 back in its place."""
    root = checkpoint.checkpoint_dir(tmp_path)
    proc = _saves(tmp_path, 1, 2, 2, pause="2:replacing")
    _kill_when(proc, lambda: any(root.glob(".old-step_00000002-*")))
    assert not (root / "step_00000002").exists()  # killed inside the window
    assert checkpoint.checkpoint_to_resume("auto", tmp_path) == root / "step_00000002"
    assert _tag(root / "step_00000002") == "2/1" and (root / "step_00000002" / "learner.txt").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002"]

    # Step 3 (keep=2 drops step 1), then step 2 again, completed: it replaces step 2, and step 3,
    # the rewound run's, goes.
    assert _saves(tmp_path, 3, 2).wait(timeout=60) == 0
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]
    assert _tag(root / "step_00000002") == "2/1"


def test_training_killed_while_checkpointing_resumes_from_the_previous_checkpoint(
    quickstart_args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """A real run (local mode, tiny model) killed while it writes checkpoint 3: checkpoint 2 is the
    newest complete one, and trainer.resume=auto continues from it to the end."""
    out = tmp_path / "run"
    small = ("data.global_prompts_per_step=4", "algorithm.group_size=4")
    args = quickstart_args(
        out, "cluster.mode=local", "trainer.max_steps=4", "trainer.checkpoint_every=1", *small
    )
    cmd = [sys.executable, "-m", "rlft", *args]
    root = checkpoint.checkpoint_dir(out)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(**{checkpoint.PAUSE_ENV: "3:partial"}))
    _kill_when(proc, lambda: any(root.glob(".tmp-step_00000003-*/learner.json")))
    assert checkpoint.latest_checkpoint(out) == root / "step_00000002"

    resumed = subprocess.run(
        [*cmd, "trainer.resume=auto"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [m["policy_version"] for m in metrics] == [1, 2, 3, 4]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003", "step_00000004"]
