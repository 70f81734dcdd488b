"""Structured config schemas.

Every config group under ``conf/`` is validated against one of these dataclasses (registered with
Hydra's ConfigStore in :func:`register_configs`), so a typo'd key or a wrong type fails at start,
naming the key. Batch-size knobs say in their name whether they are global or per device and
whether they count prompts or samples (a sample = one completion of one prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConfig:
    path: str = "tiny"
    """Hugging Face hub id or local directory of a causal LM. ``tiny`` builds the offline test
    model (scripts/make_tiny_model.py) on first use and caches it under ``~/.cache/rlft``."""
    tokenizer_path: str | None = None
    """Tokenizer hub id or directory; defaults to ``path``."""
    dtype: str = "float32"
    """Parameter dtype: float32 | bfloat16 | float16."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``; only enable for models whose code you trust."""
    max_prompt_tokens: int = 128
    """Longest prompt (after the chat template). Longer prompts fail at start with an error."""


@dataclass
class KLConfig:
    estimator: str = "k3"
    """KL estimator between policy and reference: k1 | k2 | k3 (Schulman, 'Approximating KL')."""


@dataclass
class AlgorithmConfig:
    name: str = "grpo"
    """Name of the algorithm preset (for logs and recipes)."""
    advantage: str = "grpo"
    """Advantage estimator, by registry name (rlft.algorithms.ADVANTAGE_ESTIMATORS)."""
    policy_loss: str = "ppo_clip"
    """Policy loss, by registry name (rlft.algorithms.POLICY_LOSSES)."""
    loss_agg: str = "token_mean"
    """How per-token losses become one number (rlft.algorithms.LOSS_AGGREGATIONS)."""
    group_size: int = 8
    """G: completions sampled per prompt; advantages are normalised within each group."""
    norm_adv_by_std: bool = True
    """Divide group-centred rewards by the group's standard deviation (GRPO); off = Dr. GRPO."""
    clip_low: float = 0.2
    """PPO clip range below 1: ratios under 1 - clip_low stop giving gradient."""
    clip_high: float = 0.2
    """PPO clip range above 1: ratios over 1 + clip_high stop giving gradient."""
    beta: float = 0.0
    """Weight of the KL(policy || reference) loss term; 0 loads no reference model."""
    kl: KLConfig = field(default_factory=KLConfig)
    epochs_per_step: int = 1
    """Passes over each step's samples (mu in the GRPO paper)."""


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    """Softmax temperature of the sampler; the learner scores tokens at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 = off."""
    max_new_tokens: int = 32
    """Completion length limit in tokens."""


@dataclass
class RolloutConfig:
    engine: str = "hf"
    """Generation engine: hf (transformers generate)."""
    num_workers: int = 1
    """R: number of RolloutWorker actors; prompts are split evenly across them."""
    num_cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each rollout worker (cluster.mode=ray)."""
    num_gpus_per_worker: float = 0.0
    """GPUs Ray reserves for each rollout worker (cluster.mode=ray)."""
    per_worker_prompts_per_generate: int = 64
    """Largest number of prompts one worker sends to its engine at once."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class LearnerConfig:
    num_workers: int = 1
    """L: number of Learner actors (only 1 is supported until data-parallel learners land)."""
    num_cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each learner (cluster.mode=ray)."""
    num_gpus_per_worker: float = 0.0
    """GPUs Ray reserves for each learner (cluster.mode=ray)."""
    lr: float = 1e-5
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 = no clipping."""
    global_samples_per_optimizer_step: int = 0
    """Samples (over all learners) per optimizer step; 0 = one optimizer step per RL step."""
    per_device_samples_per_micro_batch: int = 16
    """Samples per forward/backward on one device; gradients accumulate over micro-batches."""


@dataclass
class DataConfig:
    path: str = "builtin:repeat_digit"
    """Prompt source: ``builtin:<task>`` (generated on the fly, see rlft.data.tasks), a local
    jsonl/parquet/csv file, or a hub dataset name."""
    split: str = "train"
    """Split to read from a hub dataset."""
    prompt_column: str = "prompt"
    """Column holding the prompt text; every other column reaches reward functions as a keyword."""
    global_prompts_per_step: int = 8
    """B: prompts drawn per RL step (each expanded to algorithm.group_size samples)."""
    apply_chat_template: bool = True
    """Wrap each prompt as a user message with the tokenizer's chat template."""
    system_prompt: str | None = None
    """Optional system message placed before each prompt when the chat template is used."""


@dataclass
class RewardConfig:
    functions: list[str] = field(default_factory=list)
    """Reward functions as ``path/to/file.py:function`` or ``module.sub:function``."""
    weights: list[float] = field(default_factory=list)
    """One weight per function; empty = 1.0 each. The sample reward is the weighted sum."""
    failure_reward: float = 0.0
    """Reward a sample gets from a function that raised, returned the wrong length or a non-number."""


@dataclass
class ClusterConfig:
    mode: str = "ray"
    """ray: every worker is a Ray actor. local: the same classes in this process (for pdb)."""
    address: str = ""
    """Ray cluster address; empty starts a local Ray instance."""
    num_cpus: int | None = None
    """CPUs for a locally started Ray instance; default = all of this machine's."""


@dataclass
class WandbConfig:
    enabled: bool = True
    """Log to Weights & Biases."""
    project: str = "rlft"
    """wandb project name."""
    mode: str = "auto"
    """online | offline | disabled | auto (online only if you have logged in, else offline)."""


@dataclass
class TrackingConfig:
    console: bool = True
    """Live progress bar with reward and throughput."""
    jsonl: bool = True
    """Write metrics.jsonl in the run directory (always on for the CLI's reward summary)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    samples_per_step: int = 4
    """Completions per step written to samples.jsonl (0 = none)."""


@dataclass
class TrainerConfig:
    max_steps: int = 100
    """Number of RL steps (one rollout + one policy update each)."""
    seed: int = 0
    """Seed for prompt sampling, generation and initialisation of everything random."""
    output_dir: str = "runs/${now:%Y-%m-%d_%H-%M-%S}"
    """Run directory: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/."""
    checkpoint_every: int = 0
    """Save a checkpoint every N steps (and at the end); 0 = only at the end."""
    resume: str = "auto"
    """auto (newest complete checkpoint in output_dir, if any) | never | <checkpoint dir>."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""


@dataclass
class RLFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    """Register the root schema; ``conf/config.yaml`` builds on it, so every group is validated."""
    ConfigStore.instance().store(name="rlft_schema", node=RLFTConfig)


def validate(cfg: RLFTConfig) -> None:
    """Checks across keys that a type alone cannot express; raises ValueError naming the key."""
    checks = [
        (cfg.algorithm.group_size >= 2, "algorithm.group_size must be >= 2 (a group needs a baseline)"),
        (cfg.data.global_prompts_per_step >= 1, "data.global_prompts_per_step must be >= 1"),
        (cfg.rollout.num_workers >= 1, "rollout.num_workers must be >= 1"),
        (cfg.learner.num_workers == 1, "learner.num_workers: only 1 learner is supported so far"),
        (cfg.rollout.sampling.temperature > 0, "rollout.sampling.temperature must be > 0 for RL"),
        (cfg.rollout.sampling.max_new_tokens >= 1, "rollout.sampling.max_new_tokens must be >= 1"),
        (
            cfg.learner.per_device_samples_per_micro_batch >= 1,
            "learner.per_device_samples_per_micro_batch must be >= 1",
        ),
        (
            cfg.learner.global_samples_per_optimizer_step >= 0,
            "learner.global_samples_per_optimizer_step must be >= 0",
        ),
        (cfg.algorithm.epochs_per_step >= 1, "algorithm.epochs_per_step must be >= 1"),
        (cfg.algorithm.beta >= 0, "algorithm.beta must be >= 0"),
        (cfg.trainer.max_steps >= 1, "trainer.max_steps must be >= 1"),
        (bool(cfg.reward.functions), "reward.functions is empty: name at least one reward function"),
        (
            not cfg.reward.weights or len(cfg.reward.weights) == len(cfg.reward.functions),
            f"reward.weights has {len(cfg.reward.weights)} entries for {len(cfg.reward.functions)} "
            "reward.functions; give one weight per function (or none for 1.0 each)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
