"""The online RL step loop (GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++, PPO). Read
:func:`train` and :func:`run_steps` top to bottom to know what a step does.

The driver holds no model weights: it draws prompts, asks the rollout workers for completions,
scores them (reward functions here, a reward model on its own actor), hands the scored samples
to the learner, which computes advantages and updates the policy, and moves the new weights to
the rollout workers. Collecting rollouts lives in :mod:`rlft.trainers.rollout`.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlft.cluster import Cluster, constructor_error
from rlft.config import RLFTConfig
from rlft.data.prompts import PromptSampler
from rlft.errors import SetupError
from rlft.evaluation import Evaluator
from rlft.learner.group import LearnerGroup
from rlft.learner.learner import Learner
from rlft.modeling import check_model_source, context_length, load_tokenizer
from rlft.rewards import RewardManager
from rlft.rewards.model_worker import RewardModelWorker
from rlft.rollout.agents import agent_spec, load_agent
from rlft.rollout.worker import RolloutWorker, spawn_rollout_workers
from rlft.shipped import SHIPPED_ROOT
from rlft.tracking import Trackers, make_trackers
from rlft.trainers import checkpoint
from rlft.trainers.rollout import RolloutContext, RolloutPipeline, SamplerState, collect
from rlft.trainers.run_dir import CompletedSteps, RunDirectory
from rlft.validation import check_context
from rlft.weights import make_transport, resolve_transport

PROJECT_ROOT = SHIPPED_ROOT
"""Relative paths like ``rewards/synthetic.py:fn`` resolve against the current directory, then here
(rlft's shipped ``rewards/`` and ``envs/``, in a checkout or an installed wheel)."""

log = logging.getLogger("rlft.trainer")

__all__ = ["SetupError", "train"]  # SetupError lives in rlft.errors; importable from here as before


def train(cfg: RLFTConfig) -> Path:
    """Run ``cfg.trainer.max_steps`` RL steps; returns the run directory.

    If an actor dies (``trainer.max_restarts`` times at most), every actor is killed and started
    afresh, and the run continues from its newest checkpoint (or from the start). An actor whose
    constructor raised is not restarted: it would raise again."""
    inputs = _prepare(cfg)
    # The run directory is locked and written only once the input is known to be good.
    with RunDirectory(cfg) as run, Cluster(cfg.cluster) as cluster, inputs.rewards or nullcontext():
        if (total := cluster.total_resources()) is not None:
            check_resources(resource_demand(cfg), total)
        resume_from, fresh_sampler = run.resume_from, inputs.sampler.state_dict()
        trackers = make_trackers(cfg.tracking, run.path, cfg.trainer.max_steps, run.start_step, asdict(cfg))
        restart_max = cfg.trainer.max_restarts
        with trackers:
            for restart in range(restart_max + 1):
                try:
                    run_steps(cfg, cluster, run.path, inputs, resume_from, trackers)
                    break
                except cluster.actor_died as err:
                    if (message := constructor_error(err)) is not None:  # it would fail again
                        raise SetupError(message) from err
                    if restart == restart_max:
                        raise
                    log.warning("an actor died (%s): restart %d of at most %d", err, restart + 1, restart_max)
                    cluster.kill_all()
                    resume_from = checkpoint.latest_checkpoint(run.path) or run.resume_from
                    inputs.sampler.load_state_dict(fresh_sampler)  # the checkpoint (if any) restores it
    return run.path


def run_steps(
    cfg: RLFTConfig,
    cluster: Cluster,
    run_dir: Path,
    inputs: _Inputs,
    resume_from: Path | None,
    trackers: Trackers,
) -> None:
    """Start the actors, restore ``resume_from`` (if any), then run the remaining steps. Ctrl-C
    ends it with :class:`Interrupted`, after checkpointing the last step if it is complete."""
    learner, workers = start_workers(cluster, cfg)
    rollouts = RolloutContext(
        cfg,
        cluster,
        workers,
        inputs.sampler,
        inputs.rewards,
        inputs.tokenizer,
        _start_reward_model(cluster, cfg),
    )
    transport_name = resolve_transport(
        cfg.weights.transport, cluster, learner, workers, sharded=cfg.learner.strategy == "fsdp2"
    )
    log.info("weight sync: %s (weights.transport=%s)", transport_name, cfg.weights.transport)
    transport = make_transport(transport_name, cfg.weights.bucket_mb, local=cluster.local)
    start_step = checkpoint.resume(run_dir, resume_from, learner, inputs.sampler)
    transport.sync(cluster, learner, workers)
    # trainer.async: the next max_staleness steps' rollouts are collected while the learner trains.
    depth = cfg.trainer.max_staleness if cfg.trainer.asynchronous else 0
    pipeline = RolloutPipeline(lambda step: collect(rollouts, step), depth, threaded=not cluster.local)
    if resume_from is not None:  # the rollouts it holds for later steps, with trainer.async
        pipeline.restore(resume_from, inputs.sampler)

    done = CompletedSteps(start_step)
    with done.checkpoint_on_interrupt(cfg.trainer, run_dir), closing(pipeline):
        for step in range(start_step + 1, cfg.trainer.max_steps + 1):
            step_start = time.perf_counter()

            # 1-3. Draw B prompts, generate G completions of each on the rollout workers and
            # score them. DAPO dynamic sampling drops groups whose rewards are all equal and
            # draws more prompts until B groups carry a learning signal. With trainer.async this
            # rollout was started up to max_staleness steps ago, while earlier updates ran; the
            # pipeline's order makes its samples at most that many policy versions old.
            rollout, wait_s = pipeline.next(step)
            staleness = rollout.staleness(learner_version=step - 1)
            if staleness.max() > depth:  # cannot happen unless the pipeline's invariant broke
                raise RuntimeError(f"step {step}: samples {staleness.max():.0f} versions old, over {depth}")

            # 4. Update the policy on the learner; it computes the advantages (a pure function
            # of rewards, groups and, for PPO, its critic's values) and the loss. Colocated
            # rollout workers sleep meanwhile, to leave the device's memory to the learner.
            _on_workers(cluster, workers, "sleep", cfg.cluster.colocate)
            logged = min(cfg.tracking.samples_per_step, len(rollout.completions))
            token_stats = None
            if cfg.tracking.token_stats and logged and rollout.episodes is None:  # before the update
                token_stats = cluster.get(learner.token_stats.remote(rollout.samples(), list(range(logged))))
            done.updating()  # from here until the step is logged and saved, no checkpoint on Ctrl-C
            learner_metrics = learner.train_step(rollout.samples())
            _on_workers(cluster, workers, "wake_up", cfg.cluster.colocate)

            # 5. Send the new weights to every rollout worker.
            sync_metrics = transport.sync(cluster, learner, workers)

            # 6. Every eval.every_steps steps: evaluate the new weights on held-out prompts.
            eval_metrics = {}
            if inputs.evaluator is not None and inputs.evaluator.due(step):
                eval_metrics = inputs.evaluator.evaluate(cluster, workers)

            step_s = time.perf_counter() - step_start
            metrics = {
                **rollout.metrics(step_s),
                **learner_metrics,
                **sync_metrics,
                **eval_metrics,
                "async/staleness_mean": staleness.mean().item(),
                "async/staleness_max": staleness.max().item(),
                "timing/rollout_wait_s": wait_s,
                "timing/step_s": step_s,
                "data/filtered_too_long": inputs.sampler.num_filtered_too_long,
            }
            trackers.log(metrics, step)
            trackers.log_samples(rollout.sample_rows(logged, token_stats, inputs.tokenizer), step)

            # The sampler's position as of this step's prompts; the async rollouts drawn beyond it
            # are saved with their own position (pipeline.save).
            save_args = (run_dir, step, learner, SamplerState(rollout.sampler_state), pipeline)
            checkpoint.save_if_due(cfg.trainer, *save_args)
            done.completed(step, save_args)  # what a Ctrl-C before the next update checkpoints


def _on_workers(cluster: Cluster, workers: list[Any], method: str, enabled: bool) -> None:
    """Call ``method`` on every rollout worker and wait, if ``enabled``."""
    if enabled:
        cluster.get([getattr(w, method).remote() for w in workers])


@dataclass
class _Inputs:
    """What the run reads before any actor starts."""

    sampler: PromptSampler
    rewards: RewardManager | None
    tokenizer: Any
    evaluator: Evaluator | None


def _prepare(cfg: RLFTConfig) -> _Inputs:
    """Everything that can fail on bad input, checked before any actor starts."""
    try:
        check_model(cfg)
        tokenizer = load_tokenizer(cfg.model)
        sampler = PromptSampler(cfg.data, cfg.trainer.seed, tokenizer, cfg.model.max_prompt_tokens)
        rewards = None
        agent = agent_spec(cfg.agent)
        if agent is not None:  # the agent gives the reward; loaded here so bad specs fail at start
            load_agent(cfg.agent, [PROJECT_ROOT])
        if cfg.reward.functions and agent is None:
            rewards = RewardManager.from_config(cfg.reward, search_dirs=[PROJECT_ROOT])
            rewards.check_columns(c for c in sampler.columns if c != cfg.data.prompt_column)
        if cfg.env.path is not None:  # loads the environment, its tools and parser; builds one
            from rlft.envs.loop import EpisodeRunner

            EpisodeRunner(
                cfg.env, tokenizer, [PROJECT_ROOT], cfg.data.prompt_column, cfg.data.system_prompt
            ).check()
        evaluator = Evaluator(cfg, tokenizer, [PROJECT_ROOT]) if cfg.eval.every_steps else None
        return _Inputs(sampler, rewards, tokenizer, evaluator)
    except (OSError, ValueError, TypeError, ImportError, AttributeError) as err:
        raise SetupError(str(err)) from err


def check_model(cfg: RLFTConfig) -> None:
    """The model, tokenizer, critic and reward-model paths exist (or are hub ids that can be
    loaded), and the model's context holds the longest prompt plus the longest completion."""
    sources = {
        "model.path": cfg.model.path,
        "model.tokenizer_path": cfg.model.tokenizer_path,
        "model.critic_path": cfg.model.critic_path,
        "reward.model.path": cfg.reward.model.path,
    }
    for key, path in sources.items():
        if path is not None:
            check_model_source(path, key)
    check_context(cfg, context_length(cfg.model))


def start_workers(cluster: Cluster, cfg: RLFTConfig) -> tuple[LearnerGroup, list[Any]]:
    """``learner.num_workers`` data-parallel learners and ``rollout.num_workers`` rollout workers,
    each with its own resources (with ``cluster.colocate``, learner i and rollout worker i share
    one bundle's devices, half of its GPUs each)."""
    lc, rc = cfg.learner, cfg.rollout
    learner_gpus, rollout_gpus = lc.num_gpus_per_worker, rc.num_gpus_per_worker
    if cfg.cluster.colocate:
        cpus = lc.num_cpus_per_worker + rc.num_cpus_per_worker
        cluster.colocate([Learner, RolloutWorker], lc.num_workers, cpus, lc.num_gpus_per_worker)
        learner_gpus = rollout_gpus = lc.num_gpus_per_worker / 2
    learner = LearnerGroup(
        cluster,
        Learner,
        cfg.model,
        lc,
        cfg.algorithm,
        rc.sampling,
        cfg.trainer.seed,
        cluster.threads(lc.num_cpus_per_worker),
        cfg.teacher,
        num_workers=lc.num_workers,
        num_cpus=lc.num_cpus_per_worker,
        num_gpus=learner_gpus,
        samples_per_optimizer_step=lc.global_samples_per_optimizer_step,
        sharded=lc.strategy == "fsdp2",
    )
    return learner, spawn_rollout_workers(cluster, cfg.model, rc, rollout_gpus)


def resource_demand(cfg: RLFTConfig) -> dict[str, tuple[float, float]]:
    """What the run's actors reserve on Ray: (CPUs, GPUs) for each part, keyed by the config keys
    that set them. With ``cluster.colocate`` the placement group holds the learners and rollout
    workers (their CPUs summed, the learners' GPUs); the reward-model actor is outside it. A
    preference run (``algorithm.kind=preference``) starts the learners only."""
    lc, rc, rm = cfg.learner, cfg.rollout, cfg.reward.model
    learners = (lc.num_workers * lc.num_cpus_per_worker, lc.num_workers * lc.num_gpus_per_worker)
    if cfg.algorithm.kind == "preference":
        return {"learners (learner.num_cpus_per_worker, learner.num_gpus_per_worker)": learners}
    if cfg.cluster.colocate:
        demand = {
            "the placement group of cluster.colocate=true (learner.num_cpus_per_worker + "
            "rollout.num_cpus_per_worker, learner.num_gpus_per_worker, per learner)": (
                lc.num_workers * (lc.num_cpus_per_worker + rc.num_cpus_per_worker),
                lc.num_workers * lc.num_gpus_per_worker,
            )
        }
    else:
        demand = {
            "learners (learner.num_cpus_per_worker, learner.num_gpus_per_worker)": learners,
            "rollout workers (rollout.num_cpus_per_worker, rollout.num_gpus_per_worker)": (
                rc.num_workers * rc.num_cpus_per_worker,
                rc.num_workers * rc.num_gpus_per_worker,
            ),
        }
    if rm.path is not None:
        demand["the reward model (reward.model.num_cpus, reward.model.num_gpus)"] = (rm.num_cpus, rm.num_gpus)
    return demand


def check_resources(demand: dict[str, tuple[float, float]], total: dict[str, float]) -> None:
    """Raise a SetupError, before any actor starts, if ``demand`` (:func:`resource_demand`) needs
    more CPUs or GPUs than the Ray instance has in ``total``: Ray would wait for them forever."""
    for index, resource in enumerate(("CPU", "GPU")):
        parts = {name: amounts[index] for name, amounts in demand.items() if amounts[index] > 0}
        need, have = sum(parts.values()), total.get(resource, 0.0)
        if need > have + 1e-9:
            listed = "; ".join(f"{amount:g} for {name}" for name, amount in parts.items())
            # Ray's CPU count is a number to reserve from, not the cores: it may exceed them.
            more = f" or raise cluster.num_cpus to {need:g}" if resource == "CPU" else ""
            raise SetupError(
                f"the actors reserve {need:g} {resource}s but Ray has {have:g}, so it would wait for "
                f"them forever: {listed}. Lower those keys (fractions such as 0.5 are fine){more}"
            )


def _start_reward_model(cluster: Cluster, cfg: RLFTConfig) -> Any | None:
    rm = cfg.reward.model
    if rm.path is None:
        return None
    return cluster.spawn(
        RewardModelWorker,
        rm,
        cfg.model.dtype,
        cluster.threads(rm.num_cpus),
        num_cpus=rm.num_cpus,
        num_gpus=rm.num_gpus,
    )
