"""The offline preference loop (DPO, cDPO, IPO, SimPO, ORPO, KTO). Read :func:`train` top to
bottom to know what a step does.

Same learner actor, checkpoints and trackers as the online loop, and no rollout stage: the driver
draws a batch of tokenized examples, looks up their reference log-probs (computed once per
example by the learner, then cached here: the reference never changes) and asks the learner for
one optimizer step.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlft.algorithms.preference_losses import REFERENCE_FREE_PREFERENCE_LOSSES, UNPAIRED_PREFERENCE_LOSSES
from rlft.cluster import Cluster
from rlft.config import RLFTConfig
from rlft.data.preference import (
    Example,
    ExampleSampler,
    PreferenceDataset,
    UnpairedExample,
    load_preference_data,
)
from rlft.errors import SetupError
from rlft.learner.group import LearnerGroup
from rlft.learner.preference import Logps, PreferenceLearner
from rlft.modeling import load_tokenizer
from rlft.tracking import make_trackers
from rlft.trainers import checkpoint
from rlft.trainers.online import check_model, check_resources, resource_demand
from rlft.trainers.rollout import SamplerState
from rlft.trainers.run_dir import CompletedSteps, RunDirectory


def train(cfg: RLFTConfig) -> Path:
    """Run ``cfg.trainer.max_steps`` preference steps; returns the run directory."""
    data, tokenizer = _prepare(cfg)
    sampler = ExampleSampler(len(data.examples), cfg.trainer.seed)
    ref_cache: dict[int, tuple[float, ...]] | None = (
        None if cfg.algorithm.preference_loss in REFERENCE_FREE_PREFERENCE_LOSSES else {}
    )

    # The run directory is locked and written only once the input is known to be good.
    with RunDirectory(cfg) as run, Cluster(cfg.cluster) as cluster:
        run_dir = run.path
        if (total := cluster.total_resources()) is not None:
            check_resources(resource_demand(cfg), total)
        lc = cfg.learner
        with cluster.constructor_errors(SetupError):  # the first calls show a constructor's error
            learner = LearnerGroup(
                cluster,
                PreferenceLearner,
                cfg.model,
                lc,
                cfg.algorithm,
                cfg.trainer.seed,
                cluster.threads(lc.num_cpus_per_worker),
                num_workers=lc.num_workers,
                num_cpus=lc.num_cpus_per_worker,
                num_gpus=lc.num_gpus_per_worker,
                sharded=lc.strategy == "fsdp2",
            )
            start_step = checkpoint.resume(run_dir, run.resume_from, learner, sampler)

        done = CompletedSteps(start_step)
        trackers = make_trackers(cfg.tracking, run_dir, cfg.trainer.max_steps, start_step, asdict(cfg))
        interrupt = done.checkpoint_on_interrupt(cfg.trainer, run_dir)
        with trackers, cluster.constructor_errors(SetupError), interrupt:
            for step in range(start_step + 1, cfg.trainer.max_steps + 1):
                step_start = time.perf_counter()

                # 1. Draw B examples (pairs, or unpaired examples for KTO).
                indices = sampler.sample(cfg.data.global_prompts_per_step)
                batch = [data.examples[i] for i in indices]

                # 2. Reference log-probs (none for SimPO/ORPO), each computed once and then cached.
                ref = _reference_logps(cluster, learner, data, indices, ref_cache)

                # 3. One optimizer step on the learner.
                done.updating()  # from here until the step is logged and saved, no checkpoint on Ctrl-C
                learner_metrics, rewards = learner.preference_step(batch, ref)

                metrics = {
                    **learner_metrics,
                    "data/filtered_too_long": data.num_filtered_too_long,
                    "timing/step_s": time.perf_counter() - step_start,
                }
                trackers.log(metrics, step)
                n = cfg.tracking.samples_per_step
                trackers.log_samples(_sample_rows(tokenizer, batch[:n], rewards[:n]), step)
                save_args = (run_dir, step, learner, SamplerState(sampler.state_dict()))
                checkpoint.save_if_due(cfg.trainer, *save_args)
                done.completed(step, save_args)  # what a Ctrl-C before the next update checkpoints
    return run_dir


def _prepare(cfg: RLFTConfig) -> tuple[PreferenceDataset, Any]:
    """Everything that can fail on bad input, checked before any actor starts."""
    try:
        check_model(cfg)
        tokenizer = load_tokenizer(cfg.model)
        data = load_preference_data(
            cfg.data,
            tokenizer,
            unpaired=cfg.algorithm.preference_loss in UNPAIRED_PREFERENCE_LOSSES,
            max_prompt_tokens=cfg.model.max_prompt_tokens,
            max_completion_tokens=cfg.rollout.sampling.max_new_tokens,
        )
        return data, tokenizer
    except (OSError, ValueError) as err:
        raise SetupError(str(err)) from err


def _reference_logps(
    cluster: Cluster,
    learner: Any,
    data: PreferenceDataset,
    indices: list[int],
    cache: dict[int, tuple[float, ...]] | None,
) -> Logps | None:
    """The reference log-probs of the examples at ``indices``, each computed on first use and kept
    in ``cache`` (exact: the reference never changes); None when the loss needs no reference."""
    if cache is None:
        return None
    missing = sorted(set(indices) - cache.keys())
    if missing:
        computed = cluster.get(learner.reference_logps.remote([data.examples[i] for i in missing]))
        cache.update(zip(missing, computed, strict=True))
    return [cache[i] for i in indices]


def _sample_rows(tokenizer: Any, batch: list[Example], rewards: Logps) -> list[dict[str, Any]]:
    """Examples as text with their implicit rewards, for samples.jsonl."""
    rows = []
    for example, reward in zip(batch, rewards, strict=True):
        row: dict[str, Any] = {"prompt": tokenizer.decode(example.prompt_ids)}
        if isinstance(example, UnpairedExample):
            row.update(
                completion=tokenizer.decode(example.completion_ids),
                desirable=example.desirable,
                reward=reward[0],
            )
        else:
            row.update(
                chosen=tokenizer.decode(example.chosen_ids),
                rejected=tokenizer.decode(example.rejected_ids),
                reward_chosen=reward[0],
                reward_rejected=reward[1],
            )
        rows.append(row)
    return rows
