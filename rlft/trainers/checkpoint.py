"""Run directories and atomic checkpoints.

A checkpoint is written into a temporary directory beside its final place (``.tmp-step_N-*``),
flushed to disk, and renamed into place (``step_N``) only when complete, so a crash mid-write
leaves the previous checkpoint as the newest. Replacing a checkpoint of the same step (a run
resumed from an older one) moves the old one aside (``.old-step_N-*``) before the new one is
renamed in, and deletes it only then; deleting old checkpoints renames them away first
(``.del-*``). Only ``step_*`` directories with a ``trainer_state.json`` count as checkpoints;
:func:`recover` (run before resuming) puts back a checkpoint a crash left moved aside and
removes the other leftovers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from rlft.config import TrainerConfig

CKPT_PREFIX = "step_"
_TMP, _OLD, _DEL = ".tmp-", ".old-", ".del-"
PAUSE_ENV = "RLFT_TEST_CHECKPOINT_PAUSE"
"""Test hook: ``<step>:<point>`` holds the writer of checkpoint ``step`` at ``point`` (``partial``:
the learner's files are written, the checkpoint is not complete; ``replacing``: the old checkpoint
of that step is moved aside, the new one not yet in place) for an hour, so that a test can kill the
process there."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _complete(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first."""
    return sorted(p for p in root.glob(f"{CKPT_PREFIX}*") if (p / "trainer_state.json").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (temporary, half-written ones are ignored)."""
    ckpts = _complete(checkpoint_dir(run_dir))
    return ckpts[-1] if ckpts else None


def recover(run_dir: Path) -> None:
    """Clean up after a crash while checkpointing: a checkpoint moved aside to be replaced goes
    back in place if its replacement never arrived (else it is deleted), and half-written and
    half-deleted directories are removed. Run it while nothing writes checkpoints."""
    root = checkpoint_dir(run_dir)
    for old in sorted(root.glob(f"{_OLD}*")):
        final = root / old.name[len(_OLD) :].rsplit("-", 1)[0]
        if (final / "trainer_state.json").is_file():
            shutil.rmtree(old)
        else:
            if final.exists():
                shutil.rmtree(final)
            os.replace(old, final)
    for leftover in [*root.glob(f"{_TMP}*"), *root.glob(f"{_DEL}*")]:
        shutil.rmtree(leftover)


def save_checkpoint(
    run_dir: Path, step: int, trainer_state: dict[str, Any], write_learner: Any, keep: int
) -> Path:
    """Write a checkpoint of ``step`` atomically; ``write_learner(dir)`` stores the learner's part.
    It also holds the trainer state and the run's resolved config.

    Keeps the newest ``keep`` checkpoints and deletes older ones. Checkpoints of later steps are
    deleted too: they belong to the run this one rewound (by resuming from an older checkpoint),
    whose log lines past the resumed step were dropped already.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CKPT_PREFIX}{step:08d}"
    tag = uuid.uuid4().hex[:8]
    tmp = root / f"{_TMP}{final.name}-{tag}"
    tmp.mkdir()
    write_learner(tmp)
    _pause_for_test(step, "partial")
    if (run_dir / "config.yaml").is_file():
        shutil.copy2(run_dir / "config.yaml", tmp / "config.yaml")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}))
    _fsync_tree(tmp)
    if final.exists():  # a re-run of the same step after a resume: replace it, never losing it
        old = root / f"{_OLD}{final.name}-{tag}"
        os.replace(final, old)
        _pause_for_test(step, "replacing")
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    ckpts = _complete(root)
    later = [c for c in ckpts if c.name > final.name]
    kept = [c for c in ckpts if c.name <= final.name]
    for ckpt in later + (kept[:-keep] if keep > 0 else []):
        gone = root / f"{_DEL}{ckpt.name}-{tag}"
        os.replace(ckpt, gone)  # vanishes at once, never seen half-deleted
        shutil.rmtree(gone, ignore_errors=True)
    return final


def _fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` (and the directories) to disk, so the rename that
    publishes the checkpoint never gets ahead of its contents after a power loss."""
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_for_test(step: int, point: str) -> None:
    if os.environ.get(PAUSE_ENV) == f"{step}:{point}":
        time.sleep(3600)


def save_if_due(
    cfg: TrainerConfig, run_dir: Path, step: int, learner: Any, sampler: Any, pipeline: Any = None
) -> None:
    """Checkpoint the learner, the data position and the rollouts in flight (``pipeline.save``,
    trainer.async) every ``trainer.checkpoint_every`` steps and after the last step."""
    every = cfg.checkpoint_every
    if step == cfg.max_steps or (every and step % every == 0):

        def write(directory: Path) -> None:
            learner.save_checkpoint(str(directory))
            if pipeline is not None:
                pipeline.save(directory)

        save_checkpoint(run_dir, step, {"sampler": sampler.state_dict()}, write, keep=cfg.keep_checkpoints)


def checkpoint_to_resume(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint ``trainer.resume`` asks for: auto = newest in the run, never, or a directory."""
    if resume != "never":
        recover(run_dir)
    if resume == "never":
        if latest_checkpoint(run_dir) is not None:
            raise FileExistsError(
                f"trainer.resume=never but {checkpoint_dir(run_dir)} holds checkpoints of an earlier run; "
                "choose a new trainer.output_dir, or resume it with trainer.resume=auto"
            )
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"trainer.resume={resume!r} is not a checkpoint directory (no trainer_state.json)"
        )
    return path


def resume(run_dir: Path, ckpt: Path | None, learner: Any, sampler: Any) -> int:
    """Restore the learner and the data position from ``ckpt`` (if any) and drop log lines past it;
    returns the step to continue after (0 for a fresh run)."""
    step = 0
    if ckpt is not None:
        state = read_trainer_state(ckpt)
        learner.load_checkpoint(str(ckpt))
        sampler.load_state_dict(state["sampler"])
        step = state["step"]
    for log in ("metrics.jsonl", "samples.jsonl"):
        truncate_jsonl(run_dir / log, step)
    return step


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "trainer_state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not an rlft checkpoint: it has no trainer_state.json")
    return json.loads(path.read_text())


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (a resumed run redoes those steps; a fresh run, all).

    A line cut short by a crash is dropped too.
    """
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in keep))
