"""Issue 15 (reliability), items 2, 5 and 7: one run per run directory, earlier results never
dropped silently, Ctrl-C, and actors whose constructor fails."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rlft.cli import main
from rlft.tracking import ConsoleTracker, read_metrics
from rlft.trainers import checkpoint
from rlft.trainers.run_dir import LOCK_NAME, RunLock

SMALL = ("cluster.mode=local", "data.global_prompts_per_step=2", "algorithm.group_size=4")


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow  # two real runs (~2 min on 2 busy cores); the fast form is the next test
def test_a_second_run_into_the_same_directory_is_refused_naming_the_holder(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs into one trainer.output_dir at once: the second exits 2 naming the first (its pid,
    host and command) and the fix; the first finishes, its metrics hold each step once."""
    out = tmp_path / "run"
    slow = tmp_path / "slow.py"  # keeps the first run busy while the second starts
    slow.write_text(
        "import time\n"
        "def slow(prompts, completions, **kw):\n    time.sleep(1)\n    return [0.0] * len(prompts)\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "rlft",
        *quickstart_args(out, *SMALL, "trainer.max_steps=3", f"reward.functions=[{slow}:slow]"),
    ]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "config.yaml").is_file(), first)
        assert main(quickstart_args(out, *SMALL, "trainer.max_steps=3")) == 2
        err = capsys.readouterr().err
        holder = f"(pid {first.pid} on host {socket.gethostname()}, started "
        assert f"trainer.output_dir={out} is in use by another run {holder}" in err
        assert "choose another trainer.output_dir" in err
        assert first.wait(timeout=300) == 0, first.communicate()
    finally:
        first.kill()
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert not (out / LOCK_NAME).exists()  # released at the end


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir``'s lock until killed."""
    code = (
        "import sys, time; from pathlib import Path; from rlft.trainers.run_dir import RunLock; "
        "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_rlft_train_into_a_held_directory_exits_2_naming_the_holder(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        assert main(quickstart_args(out, *SMALL, "trainer.max_steps=1")) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"rlft: error: trainer.output_dir={out} is in use by another run (pid {holder.pid} on host " in err
    assert "choose another trainer.output_dir" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    assert main(quickstart_args(out, *SMALL, "trainer.max_steps=1")) == 0  # its holder gone: taken over


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    holder = _hold_lock(tmp_path)
    with pytest.raises(Exception, match=f"in use by another run \\(pid {holder.pid} on host"):
        RunLock(tmp_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()
    assert (
        f"taking over the stale lock {tmp_path / LOCK_NAME}" in caplog.text
        and f"pid {holder.pid}" in caplog.text
    )
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path: Path) -> None:
    holder = {"host": "node-7", "pid": 4242, "started": "2026-01-01 00:00:00", "command": "rlft train x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(Exception, match=r"pid 4242 on host node-7.*another host.*delete .*run\.lock"):
        RunLock(tmp_path).acquire()


def test_a_finished_run_is_never_truncated_silently(
    quickstart_args: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(quickstart_args(out, *SMALL, "trainer.max_steps=3")) == 0
    logged = (out / "metrics.jsonl").read_text()
    capsys.readouterr()

    # The same command again: nothing to do, and nothing is dropped.
    assert main(quickstart_args(out, *SMALL, "trainer.max_steps=2")) == 2
    err = capsys.readouterr().err
    assert "holds a run that reached step 3" in err and "trainer.overwrite=true" in err
    assert (out / "metrics.jsonl").read_text() == logged

    # Its checkpoints gone, starting afresh would drop the logged steps: refused too.
    for ckpt in checkpoint.checkpoint_dir(out).iterdir():
        for f in sorted(ckpt.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        ckpt.rmdir()
    assert main(quickstart_args(out, *SMALL, "trainer.max_steps=3")) == 2
    err = capsys.readouterr().err
    assert "3 steps logged in metrics.jsonl" in err and "another trainer.output_dir" in err
    assert (out / "metrics.jsonl").read_text() == logged

    # trainer.overwrite=true: a new run in its place.
    assert main(quickstart_args(out, *SMALL, "trainer.max_steps=1", "trainer.overwrite=true")) == 0
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1]


def test_ctrl_c_between_steps_checkpoints_the_last_one(
    quickstart_args: Callable[..., list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process: a KeyboardInterrupt while step 3's rollout is collected (the learner holds step
    2) checkpoints step 2, prints one line, and the printed command's resume continues at step 3.
    A KeyboardInterrupt during an update writes no checkpoint (the learner is between steps)."""
    from rlft.trainers import online

    collect = online.collect

    def interrupted_at_3(ctx: object, step: int) -> object:
        if step == 3:
            raise KeyboardInterrupt
        return collect(ctx, step)

    monkeypatch.setattr(online, "collect", interrupted_at_3)
    out = tmp_path / "run"
    args = quickstart_args(out, *SMALL, "trainer.max_steps=50")
    assert main(args) == 130
    err = capsys.readouterr().err
    ckpt = checkpoint.checkpoint_dir(out) / "step_00000002"
    line = f"rlft: interrupted after step 2 of 50 (checkpoint {ckpt}); resume with: rlft train "
    assert [x for x in err.splitlines() if x.startswith("rlft:")] == [
        line + " ".join(args[1:3] + args[4:]) + f" trainer.output_dir={out} trainer.resume=auto"
    ]
    assert not (out / LOCK_NAME).exists()

    monkeypatch.setattr(online, "collect", collect)
    assert main(quickstart_args(out, *SMALL, "trainer.max_steps=3")) == 0
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]

    def interrupted_update(*a: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(online.LearnerGroup, "train_step", interrupted_update)
    assert main(quickstart_args(out, *SMALL, "trainer.max_steps=5")) == 130
    ckpt = checkpoint.checkpoint_dir(out) / "step_00000003"
    assert f"rlft: interrupted after step 3 of 5 (checkpoint {ckpt})" in capsys.readouterr().err
    assert checkpoint.latest_checkpoint(out) == ckpt  # the run's end checkpoint; none for step 4


@pytest.mark.slow  # a real SIGINT to a real run (~2 min on 2 busy cores); fast form above
def test_ctrl_c_checkpoints_the_last_step_and_prints_one_line(
    quickstart_args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """SIGINT while step 3's rewards are computed: step 2 (complete, not yet checkpointed) is
    checkpointed, one line says how to resume, and resuming continues at step 3."""
    out, calls, busy = tmp_path / "run", tmp_path / "calls", tmp_path / "busy"
    reward = tmp_path / "counted.py"
    reward.write_text(
        "import os, time\nfrom pathlib import Path\n"
        "def counted(prompts, completions, **kw):\n"
        f"    calls = Path({str(calls)!r})\n"
        "    n = int(calls.read_text()) + 1 if calls.exists() else 1\n"
        "    calls.write_text(str(n))\n"
        "    if n == 3:\n"
        f"        Path({str(busy)!r}).touch()\n"
        "        time.sleep(60)\n"
        "    return [0.5] * len(prompts)\n"
    )
    args = quickstart_args(out, *SMALL, "trainer.max_steps=50", f"reward.functions=[{reward}:counted]")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlft", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(busy.is_file, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    lines = [line for line in stderr.splitlines() if line.startswith("rlft: interrupted")]
    assert len(lines) == 1, stderr[-3000:]
    ckpt = checkpoint.checkpoint_dir(out) / "step_00000002"
    assert lines[0].startswith(
        f"rlft: interrupted after step 2 of 50 (checkpoint {ckpt}); resume with: rlft train "
    )
    assert f"trainer.output_dir={out} trainer.resume=auto" in lines[0]
    assert checkpoint.read_trainer_state(ckpt)["step"] == 2

    resumed = subprocess.run(
        [sys.executable, "-m", "rlft", *args, "trainer.max_steps=3", "trainer.resume=auto"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_console_summary_counts_the_steps_before_a_restart_and_a_resume() -> None:
    from rich.console import Console

    console = Console(record=True, width=200, force_terminal=False)
    tracker = ConsoleTracker(6, start_step=1, console=console, history=[(1, 0.1)])
    for step in (2, 3, 4, 3, 4, 5, 6):  # a restart after step 4 from the checkpoint of step 2
        tracker.log({"reward/mean": step / 10}, step)
    tracker.close()
    assert "reward/mean over 6 steps" in console.export_text()


@pytest.mark.slow  # ~100 s on 2 cores; test_constructor_errors_surface_once is the fast form
def test_an_actor_whose_constructor_fails_is_not_restarted(
    quickstart_args: Callable[..., list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A config error only the learner's constructor finds (LoRA on modules the model lacks), on
    Ray: one clear error, exit 2, no restarts (trainer.max_restarts=3 would retry an actor death)."""
    args = quickstart_args(
        tmp_path / "run",
        "cluster.num_cpus=2",
        "model.lora.rank=4",
        "model.lora.target_modules=[no_such_proj]",
        "trainer.max_restarts=3",
    )
    start = time.monotonic()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"rlft: error: the (Learner|RolloutWorker) actor could not start, so it is not restarted: "
        r"\S*NoMatchingPeftModuleError: Target modules \{'no_such_proj'\} not found",
        err,
    )
    assert not any("restart" in r.getMessage() for r in caplog.records)
    print(f"constructor error reported after {time.monotonic() - start:.1f} s")


def test_constructor_errors_surface_once() -> None:
    """On Ray, an actor whose constructor raised ends the block with one line naming the actor and
    its error (rlft's trainers then stop instead of restarting it)."""
    from rlft.cluster import Cluster
    from rlft.config import ClusterConfig
    from rlft.errors import SetupError

    class _Misconfigured:  # defined here, so that Ray ships it by value to its worker
        def __init__(self, lr: float) -> None:
            raise ValueError(f"learner.lr={lr} cannot be used")

        def step(self) -> None: ...

    with Cluster(ClusterConfig(mode="ray", num_cpus=1)) as cluster:
        actor = cluster.spawn(_Misconfigured, -0.001, num_cpus=0)
        with pytest.raises(SetupError) as raised, cluster.constructor_errors(SetupError):
            cluster.get(actor.step.remote())
    assert str(raised.value) == (
        "the _Misconfigured actor could not start, so it is not restarted: "
        "ValueError: learner.lr=-0.001 cannot be used"
    )


def test_ctrl_c_in_a_preference_run_checkpoints_the_last_step(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlft.trainers import preference

    reference_logps, calls = preference._reference_logps, []

    def interrupted_at_3(*args: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return reference_logps(*args)

    monkeypatch.setattr(preference, "_reference_logps", interrupted_at_3)
    out = tmp_path / "dpo"
    args = ["train", "recipe=dpo_quickstart", f"model.path={tiny_model_dir}", f"trainer.output_dir={out}"]
    args += ["tracking.wandb.enabled=false", "cluster.mode=local", "trainer.max_steps=50"]
    assert main(args) == 130
    ckpt = checkpoint.checkpoint_dir(out) / "step_00000002"
    assert (
        f"rlft: interrupted after step 2 of 50 (checkpoint {ckpt}); resume with: " in capsys.readouterr().err
    )
    assert checkpoint.read_trainer_state(ckpt)["sampler"]["consumed"] > 0
