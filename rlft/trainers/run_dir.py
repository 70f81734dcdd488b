"""One run per run directory, and no silent loss of an earlier run's results.

A run holds ``<trainer.output_dir>/run.lock`` from before it touches the directory until it ends.
The file names its holder (host, pid, start time, command) and is locked with ``flock`` for the
holder's lifetime, so the kernel releases it when the holder dies, however it dies. A second run
into the same directory is refused, naming the holder. A lock file left by a run that is gone is
stale and taken over with a warning: on the same host when its ``flock`` is free (or, on a file
system without ``flock``, when its pid no longer runs). A lock file written on another host is
never taken over, since its pid cannot be checked from here: delete it once that run is gone.

The directory's earlier results (``metrics.jsonl`` lines, checkpoints) are never dropped
silently: a run that would start afresh over them, or that has nothing left to do, is refused,
naming the fixes (``trainer.resume=auto``, another ``trainer.output_dir``, or
``trainer.overwrite=true`` to delete them). Resuming from a checkpoint older than the last logged
step redoes the steps after it; their lines are dropped, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from omegaconf import OmegaConf

from rlft.config import RLFTConfig, TrainerConfig
from rlft.errors import Interrupted, SetupError
from rlft.trainers import checkpoint
from rlft.trainers.run_status import mark_running, pid_alive

LOCK_NAME = "run.lock"
RESULTS = ("config.yaml", "metrics.jsonl", "samples.jsonl", "checkpoints")
"""What a run writes into its directory; ``trainer.overwrite=true`` deletes these first."""

log = logging.getLogger("rlft.trainer")


@dataclass
class Holder:
    """Who holds a run directory's lock."""

    host: str
    pid: int
    started: str
    command: str

    @classmethod
    def me(cls) -> Holder:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        return cls(socket.gethostname(), os.getpid(), started, shlex.join(sys.argv))

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}: {self.command}"


class RunLock:
    """``run_dir/run.lock``, held by this process between :meth:`acquire` and :meth:`release`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; a SetupError naming the holder if it is held."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    locked = self._flock(fd)
                except BlockingIOError:
                    raise self._held(self._read(fd), "it holds the lock") from None
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)  # the holder released and removed it meanwhile: lock the new file
                    continue
                self._take(fd, locked)
                return
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked. None: this file system has no flock. Raises BlockingIOError when held."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BlockingIOError from err
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        return True

    def _take(self, fd: int, locked: bool | None) -> None:
        """Check the previous holder named in the file (if any), then write ourselves into it."""
        previous = self._read(fd)
        me = Holder.me()
        if previous is not None:
            if previous.host != me.host:
                raise self._held(previous, "it was taken on another host, whose processes rlft cannot check")
            if locked is None and pid_alive(previous.pid) and previous.pid != me.pid:
                raise self._held(previous, "its process still runs")
            log.warning("taking over the stale lock %s of a run that is gone (%s)", self.path, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _held(self, holder: Holder | None, why: str) -> SetupError:
        run_dir = self.path.parent
        return SetupError(
            f"trainer.output_dir={run_dir} is in use by another run ({holder or 'starting now'}); {why}. "
            "Wait for that run to end or stop it, or choose another trainer.output_dir. If it is no "
            f"longer running, delete {self.path}"
        )

    def _read(self, fd: int) -> Holder | None:
        """The holder the file names; None if it is empty (new) or unreadable (cut short)."""
        text = os.pread(fd, 65536, 0).decode(errors="replace")
        try:
            return Holder(**json.loads(text))
        except (json.JSONDecodeError, TypeError):
            return None

    def release(self) -> None:
        """Remove the lock file and unlock it (in that order, see :meth:`acquire`)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


class RunDirectory:
    """``trainer.output_dir`` claimed for one run: locked, checked for earlier results (refused,
    or deleted with ``trainer.overwrite=true``), crash leftovers of checkpointing cleaned up, the
    resolved config written to config.yaml and this process to status.json. Use as a context
    manager; it unlocks on exit.

    :attr:`resume_from` is the checkpoint ``trainer.resume`` asks for (None: start afresh)."""

    def __init__(self, cfg: RLFTConfig) -> None:
        self.cfg = cfg
        self.path = Path(cfg.trainer.output_dir)
        self.resume_from: Path | None = None
        self._lock = RunLock(self.path)

    def __enter__(self) -> RunDirectory:
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
            self.resume_from = self._check()
            (self.path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.cfg)))
            mark_running(self.path)
        except BaseException:
            self._lock.release()
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only if empty: nothing else was written
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()

    @property
    def start_step(self) -> int:
        """The step the run continues after: that of :attr:`resume_from`, or 0."""
        return checkpoint.read_trainer_state(self.resume_from)["step"] if self.resume_from else 0

    def _check(self) -> Path | None:
        """The checkpoint to resume from, after refusing to drop earlier results silently."""
        tc = self.cfg.trainer
        if tc.overwrite:
            self._overwrite()
        try:
            resume_from = checkpoint.checkpoint_to_resume(tc.resume, self.path)
        except (OSError, ValueError) as err:
            raise SetupError(f"{err}; or set trainer.overwrite=true to delete its results") from err
        logged = _logged_steps(self.path / "metrics.jsonl")
        fixes = (
            f"choose another trainer.output_dir, or set trainer.overwrite=true to delete its results "
            f"({', '.join(RESULTS)})"
        )
        if resume_from is None:
            if logged:
                raise SetupError(
                    f"trainer.output_dir={self.path} holds the results of an earlier run ({len(logged)} "
                    f"steps logged in metrics.jsonl, up to step {max(logged)}) and no checkpoint to continue "
                    f"from: starting afresh would drop them. Resume with trainer.resume=auto where it has "
                    f"a checkpoint, {fixes}"
                )
            return None
        step = checkpoint.read_trainer_state(resume_from)["step"]
        if step >= tc.max_steps:
            raise SetupError(
                f"trainer.output_dir={self.path} holds a run that reached step {step} ({resume_from}): "
                f"trainer.max_steps={tc.max_steps} leaves nothing to do. Raise trainer.max_steps to "
                f"continue it, {fixes}"
            )
        redone = sorted(s for s in logged if s > step)
        if redone:
            log.warning(
                "resuming from %s (step %d): steps %d-%d logged after it are dropped from metrics.jsonl "
                "and redone",
                resume_from,
                step,
                redone[0],
                redone[-1],
            )
        return resume_from

    def _overwrite(self) -> None:
        """trainer.overwrite=true: delete an earlier run's results (not a checkpoint to resume from)."""
        resume = self.cfg.trainer.resume
        if resume not in ("auto", "never") and Path(resume).resolve().is_relative_to(self.path.resolve()):
            raise SetupError(
                f"trainer.overwrite=true would delete trainer.resume={resume!r}, which is inside "
                f"trainer.output_dir={self.path}: copy it elsewhere first, or unset trainer.overwrite"
            )
        removed = []
        for name in RESULTS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            else:
                continue
            removed.append(name)
        if removed:
            log.warning("trainer.overwrite=true: deleted %s in %s", ", ".join(removed), self.path)


def _logged_steps(path: Path) -> set[int]:
    """The steps with a line in a metrics.jsonl (lines cut short by a crash are skipped)."""
    if not path.is_file():
        return set()
    steps = set()
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
            steps.add(int(json.loads(line)["step"]))
    return steps


class CompletedSteps:
    """The last step a run completed (logged, and checkpointed if due), and whether the learner
    still holds that step's weights: then a Ctrl-C can checkpoint it before the run ends."""

    def __init__(self, step: int) -> None:
        self.step = step
        self._save_args: tuple[Any, ...] | None = None
        """What ``save_if_due`` took after the trainer config for the last completed step."""
        self._consistent = True

    def updating(self) -> None:
        """The learner starts changing its weights for the next step."""
        self._consistent = False

    def completed(self, step: int, save_args: tuple[Any, ...]) -> None:
        """Step ``step`` is logged, and saved if due with ``save_if_due(cfg, *save_args)``."""
        self.step, self._save_args, self._consistent = step, save_args, True

    @contextlib.contextmanager
    def checkpoint_on_interrupt(self, cfg: TrainerConfig, run_dir: Path) -> Iterator[None]:
        """Turn a KeyboardInterrupt in the block into :class:`Interrupted`, after writing a
        checkpoint of the last completed step (as ``save_if_due`` does, made due now) if it has
        none and the learner still holds it."""
        try:
            yield
        except KeyboardInterrupt:
            latest = checkpoint.latest_checkpoint(run_dir)
            saved = latest is not None and checkpoint.read_trainer_state(latest)["step"] == self.step
            if self._consistent and self._save_args is not None and not saved:
                try:
                    checkpoint.save_if_due(replace(cfg, checkpoint_every=1), *self._save_args)
                    latest = checkpoint.latest_checkpoint(run_dir)
                except Exception as err:  # e.g. Ctrl-C in a terminal also stopped Ray's workers
                    log.warning("no checkpoint written at the interruption: %s", err)
            raise Interrupted(self.step, cfg.max_steps, run_dir, latest) from None
