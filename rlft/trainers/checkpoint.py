"""Run directories and atomic checkpoints.

A checkpoint is written into a temporary directory beside its final place and renamed into
place only when complete, so a crash mid-write leaves the previous checkpoint as the newest.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlft.config import RLFTConfig, TrainerConfig

CKPT_PREFIX = "step_"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def create_run_dir(cfg: RLFTConfig) -> Path:
    """``trainer.output_dir``, created if needed, with the resolved config in its config.yaml."""
    run_dir = Path(cfg.trainer.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return run_dir


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (temporary, half-written ones are ignored)."""
    ckpts = sorted(checkpoint_dir(run_dir).glob(f"{CKPT_PREFIX}*"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(
    run_dir: Path, step: int, trainer_state: dict[str, Any], write_learner: Any, keep: int
) -> Path:
    """Write a checkpoint of ``step`` atomically; ``write_learner(dir)`` stores the learner's part.

    Keeps the newest ``keep`` checkpoints and deletes older ones.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CKPT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    write_learner(tmp)
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}))
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob(f"{CKPT_PREFIX}*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_if_due(cfg: TrainerConfig, run_dir: Path, step: int, learner: Any, sampler: Any) -> None:
    """Checkpoint the learner and the data position every ``trainer.checkpoint_every`` steps and
    after the last step."""
    every = cfg.checkpoint_every
    if step == cfg.max_steps or (every and step % every == 0):
        save_checkpoint(
            run_dir,
            step,
            {"sampler": sampler.state_dict()},
            lambda d: learner.save_checkpoint(str(d)),
            keep=cfg.keep_checkpoints,
        )


def checkpoint_to_resume(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint ``trainer.resume`` asks for: auto = newest in the run, never, or a directory."""
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
