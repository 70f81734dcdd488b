"""Structured config schemas.

Every config group under ``conf/`` is validated against one of these dataclasses (registered with
Hydra's ConfigStore in :func:`register_configs`), so a typo'd key or a wrong type fails at start,
naming the key. Batch-size knobs say in their name whether they are global or per device and
whether they count prompts or samples (a sample = one completion of one prompt). Checks across
keys are :func:`rlft.validation.validate`.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: finite, and within the bounds given (``ge``: >=, ``gt``:
    >, ``le``: <=, ``lt``: <). A list key applies it to each entry; ``None`` (unset) always passes."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        bounds = [
            f"{op} {bound:g}"
            for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if bound is not None
        ]
        return " and ".join(bounds) or "a finite number"


def bounded(default: Any = MISSING, *, default_factory: Any = MISSING, **bounds: float) -> Any:
    """A numeric field with its :class:`Range` (``rlft.validation`` checks every one before a run
    starts): ``lr: float = bounded(1e-5, gt=0)``; no bounds = any finite number."""
    return field(default=default, default_factory=default_factory, metadata={"range": Range(**bounds)})


@dataclass
class LoraConfig:
    rank: int = bounded(0, ge=0)
    """LoRA rank r; 0 = full fine-tuning. With LoRA only the adapters are trained, checkpointed and
    sent to the rollout workers, and the reference model is the base with adapters disabled."""
    alpha: float = bounded(32.0, gt=0)
    """LoRA scaling alpha (the update is scaled by alpha / rank)."""
    dropout: float = bounded(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Names of the linear layers that get adapters."""
    quantize: str = "none"
    """none | 4bit: QLoRA, the learner's frozen base weights in 4-bit NF4 (bitsandbytes, double
    quantization), computing in model.dtype; needs rank > 0. Rollout engines keep the
    unquantized base and receive the adapters."""


@dataclass
class ModelConfig:
    path: str = "tiny"
    """Hugging Face hub id or local directory of a causal LM. ``tiny`` builds the offline test
    model (scripts/make_tiny_model.py) on first use and caches it under ``~/.cache/rlft``."""
    tokenizer_path: str | None = None
    """Tokenizer hub id or directory; defaults to ``path``."""
    critic_path: str | None = None
    """PPO critic (algorithm.advantage=gae): backbone to put a value head on; defaults to ``path``."""
    dtype: str = "float32"
    """Parameter dtype: float32 | bfloat16 | float16."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``; only enable for models whose code you trust."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_prompt_tokens: int = bounded(128, ge=1)
    """Longest prompt (after the chat template). Longer prompts are left out when the data is read
    (counted), or stop the run with ``data.on_too_long=error``."""


@dataclass
class KLConfig:
    estimator: str = "k3"
    """KL estimator between policy and reference: k1 | k2 | k3 (Schulman, 'Approximating KL')."""
    in_reward: bool = False
    """Apply KL as a per-token reward penalty (-coef * KL; PPO/REINFORCE++) instead of a loss term."""
    adaptive: bool = False
    """Adapt the coefficient toward ``target`` (Ziegler et al. 2019 controller); else fixed at beta."""
    target: float = bounded(6.0, gt=0)
    """Adaptive controller: the KL per sequence to aim for."""
    horizon: int = bounded(10000, ge=1)
    """Adaptive controller: K_beta = samples / horizon scales each update (a step changes the
    coefficient by at most a factor 1 +- 0.2 * samples / horizon)."""


@dataclass
class DynamicSamplingConfig:
    enabled: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts
    until ``data.global_prompts_per_step`` groups with signal are collected."""
    max_rounds: int = bounded(4, ge=1)
    """Give up after this many generation rounds per step and train on what was collected."""


@dataclass
class AlgorithmConfig:
    name: str = "grpo"
    """Name of the algorithm preset (for logs and recipes)."""
    kind: str = "online"
    """online: the RL step loop (rollout, rewards, policy update). preference: offline training on
    preference data (DPO family, KTO) with the same learner, checkpoints and trackers."""
    advantage: str = "grpo"
    """Advantage estimator, by registry name (rlft.algorithms.ADVANTAGE_ESTIMATORS) or as your own
    function, ``path/to/file.py:fn`` or ``module.sub:fn`` (README, "Write your own loss")."""
    policy_loss: str = "ppo_clip"
    """Policy loss, by registry name (rlft.algorithms.POLICY_LOSSES) or ``path/to/file.py:fn``."""
    loss_agg: str = "token_mean"
    """How per-token losses become one number (rlft.algorithms.LOSS_AGGREGATIONS), or a path."""
    group_size: int = bounded(8, ge=1)
    """G: completions sampled per prompt; advantages are normalised within each group."""
    norm_adv_by_std: bool = True
    """Divide group-centred rewards by the group's standard deviation (GRPO); off = Dr. GRPO."""
    clip_low: float = bounded(0.2, ge=0, lt=1)
    """PPO clip range below 1: ratios under 1 - clip_low stop giving gradient."""
    clip_high: float = bounded(0.2, ge=0)
    """PPO clip range above 1: ratios over 1 + clip_high stop giving gradient (DAPO: 0.28)."""
    dual_clip_c: float = bounded(3.0, gt=1)
    """Dual-clip PPO: for negative advantages the loss is capped at c * |A| (Ye et al. 2020)."""
    beta: float = bounded(0.0, ge=0)
    """KL coefficient (online RL; 0 loads no reference model) or preference temperature (DPO family)."""
    kl: KLConfig = field(default_factory=KLConfig)
    entropy_coef: float = bounded(0.0, ge=0)
    """Weight of the entropy bonus (subtracted from the loss)."""
    tis_cap: float = bounded(0.0, ge=0)
    """Truncated importance sampling against the sampler's logprobs: per-token weights
    min(pi_old / pi_sampler, tis_cap) correct for rollout/learner mismatch; 0 = off."""
    gamma: float = bounded(1.0, ge=0, le=1)
    """Discount for returns (GAE, REINFORCE++)."""
    lam: float = bounded(0.95, ge=0, le=1)
    """GAE lambda."""
    whiten_rewards: bool = False
    """PPO: normalise rewards over the batch before computing advantages."""
    whiten_advantages: bool = True
    """PPO (gae): normalise advantages over the batch's completion tokens."""
    value_clip: float = bounded(0.2, ge=0)
    """PPO critic: clip the new value to within this distance of the old one (clipped value loss)."""
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong_buffer_len: int = bounded(0, ge=0)
    """DAPO overlong reward shaping: penalise completions in the last N tokens before
    max_new_tokens linearly, down to -overlong_penalty at the limit; 0 = off."""
    overlong_penalty: float = bounded(1.0, ge=0)
    """DAPO overlong reward shaping: the penalty at max_new_tokens."""
    epochs_per_step: int = bounded(1, ge=1)
    """Passes over each step's samples (mu in the GRPO paper)."""
    distill_coef: float = bounded(1.0, ge=0)
    """On-policy distillation (advantage reverse_kl, algorithm=opd): weight of the teacher's
    per-token signal log pi_teacher - log pi next to the task reward's group advantage."""
    preference_loss: str = "sigmoid"
    """Offline preference loss, by registry name (rlft.algorithms.PREFERENCE_LOSSES) or
    ``path/to/file.py:fn``."""
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)
    """cDPO / robust DPO: assumed probability that a preference label is flipped."""
    simpo_gamma: float = bounded(0.5, ge=0)
    """SimPO target reward margin gamma."""
    orpo_lambda: float = bounded(0.1, ge=0)
    """ORPO: weight of the odds-ratio term next to the chosen NLL."""
    kto_desirable_weight: float = bounded(1.0, gt=0)
    """KTO lambda_D: weight of desirable examples."""
    kto_undesirable_weight: float = bounded(1.0, gt=0)
    """KTO lambda_U: weight of undesirable examples."""
    nll_coef: float = bounded(0.0, ge=0)
    """Weight of an extra NLL (SFT) term on the chosen completions (RPO-style); 0 = off."""


@dataclass
class SamplingConfig:
    temperature: float = bounded(1.0, gt=0)
    """Softmax temperature of the sampler; the learner scores tokens at the same temperature."""
    top_p: float = bounded(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = bounded(0, ge=0)
    """Keep the k most likely tokens; 0 = off."""
    max_new_tokens: int = bounded(32, ge=1)
    """Completion length limit in tokens."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a completion (its text then ends with the first one generated; the
    tokens keep everything sampled up to it); finish reason ``stop``. EOS always stops."""


@dataclass
class HFEngineConfig:
    decode: str = "auto"
    """How the hf engine samples: ``static`` (rlft's decode loop over a preallocated KV cache, each
    step replayed as a CUDA graph on a GPU), ``generate`` (transformers ``generate``, any model), or
    ``auto`` (static for llama/qwen2/qwen3-type models with full attention, else generate)."""
    cuda_graph: bool = True
    """Static decode on a GPU: capture each decode step once as a CUDA graph and replay it (false:
    run it eagerly, e.g. to debug)."""
    compile: bool = False
    """Static decode on a GPU: ``torch.compile`` the decode step (fused elementwise kernels) before
    the CUDA graph captures it; costs a one-time compile per batch size and cache length."""


HF_DECODES = ("auto", "static", "generate")
VLLM_WEIGHT_UPDATES = ("auto", "direct", "layerwise")


@dataclass
class VLLMEngineConfig:
    tensor_parallel_size: int = bounded(1, ge=1)
    """GPUs one rollout worker's engine spans (tensor parallelism); set
    rollout.num_gpus_per_worker to the same number."""
    gpu_memory_utilization: float = bounded(0.5, gt=0, le=1)
    """Fraction of each GPU vLLM may take for weights, activations and KV cache."""
    enforce_eager: bool = False
    """No CUDA graphs / torch.compile: faster start, slower decode (true for CPU tests)."""
    max_model_len: int = bounded(0, ge=0)
    """Longest prompt + completion in tokens the engine accepts; 0 = the model's own limit.
    Lower it when the KV cache cannot hold one sequence of the model's full length."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prompt prefixes (the G samples of a group); the cache is
    cleared after every weight update."""
    enable_sleep_mode: bool = False
    """Let the engine release its GPU memory while the learner trains (cluster.colocate). vLLM
    has no sleep mode on the CPU: leave it false there (sleep is then a no-op)."""
    cpu_kvcache_space_gib: int = bounded(1, ge=1)
    """KV-cache size in GiB for vLLM's CPU backend (``VLLM_CPU_KVCACHE_SPACE``, unless set)."""
    weight_update: str = "auto"
    """How new weights enter the engine: direct (copied straight into vLLM's parameters by the
    model's own loader: fuses q/k/v and gate/up, shards for tensor parallelism) | layerwise
    (vLLM's layerwise reload, which reruns each layer's post-load processing, e.g. the CPU
    backend's weight repacking or quantization) | auto (direct where vLLM uses every weight as
    loaded: a GPU, no quantization, no MLA, no parameter reshaped after loading; else layerwise)."""


@dataclass
class RolloutConfig:
    engine: str = "auto"
    """Generation engine: hf (transformers, runs anywhere) | vllm (vLLM) | auto (vllm where it is
    installed and the rollout worker sees a GPU, else hf)."""
    num_workers: int = bounded(1, ge=1)
    """R: number of RolloutWorker actors; prompts are handed out to them in chunks as each becomes free."""
    prompts_per_chunk: int = bounded(0, ge=0)
    """Prompts per generate call handed to a free worker (results come back in prompt order, and
    each chunk's seed depends only on its position, not on the worker). 0 = a quarter of each
    worker's share (one chunk with one worker)."""
    num_cpus_per_worker: float = bounded(1.0, ge=0)
    """CPUs Ray reserves for each rollout worker (cluster.mode=ray)."""
    num_gpus_per_worker: float = bounded(0.0, ge=0)
    """GPUs Ray reserves for each rollout worker (cluster.mode=ray)."""
    per_worker_prompts_per_generate: int = bounded(64, ge=1)
    """Largest number of prompts one worker sends to its engine at once."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    hf: HFEngineConfig = field(default_factory=HFEngineConfig)
    """Options of the hf engine."""
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    """Options of the vllm engine."""


@dataclass
class LearnerConfig:
    num_workers: int = bounded(1, ge=1)
    """L: number of data-parallel learner actors (one torch.distributed group: gloo on the CPU,
    NCCL on GPUs). Each holds the whole model and trains on its share of every batch, split by
    token count; gradients are summed over them. L > 1 needs cluster.mode=ray."""
    strategy: str = "dp"
    """How L > 1 learners share the model: ``dp`` = each holds all of it (gradients all-reduced);
    ``fsdp2`` = parameters, gradients and optimizer state sharded over them (torch FSDP2, one unit
    per transformer block), for models that do not fit one device. fsdp2 needs
    weights.transport=object_store (auto picks it) and no LoRA."""
    num_cpus_per_worker: float = bounded(1.0, ge=0)
    """CPUs Ray reserves for each learner (cluster.mode=ray)."""
    num_gpus_per_worker: float = bounded(0.0, ge=0)
    """GPUs Ray reserves for each learner (cluster.mode=ray)."""
    lr: float = bounded(1e-5, gt=0)
    """AdamW learning rate."""
    weight_decay: float = bounded(0.0, ge=0)
    """AdamW weight decay."""
    betas: list[float] = bounded(default_factory=lambda: [0.9, 0.999], ge=0, lt=1)
    """AdamW betas."""
    max_skipped_updates: int = bounded(10, ge=0)
    """Updates with a NaN/inf loss or gradient are skipped (metric ``skipped_updates``); more than
    this many stop the run with an error."""
    critic_lr: float = bounded(1e-5, gt=0)
    """AdamW learning rate of the PPO critic."""
    max_grad_norm: float = bounded(1.0, ge=0)
    """Clip the global gradient norm to this value; 0 = no clipping."""
    global_samples_per_optimizer_step: int = bounded(0, ge=0)
    """Samples (over all learners) per optimizer step; 0 = one optimizer step per RL step."""
    per_device_samples_per_micro_batch: int = bounded(16, ge=1)
    """Samples per forward/backward on one device; gradients accumulate over micro-batches."""
    max_tokens_per_micro_batch: int = bounded(0, ge=0)
    """Token budget of one forward/backward on one device (first-fit decreasing by length; padded
    size, or total tokens with packing); replaces per_device_samples_per_micro_batch when > 0. A
    sample longer than the budget gets a micro-batch of its own. 0 = count samples instead."""
    packing: bool = False
    """Sequence packing: a micro-batch's samples are concatenated into one row without padding,
    position ids restart per sample and attention does not cross samples."""
    packed_attention: str = "auto"
    """Attention over rows that hold several sequences (packed rows; shared-prompt preference
    pairs): varlen (torch's variable-length flash kernel on a GPU in bf16/fp16; one attention per
    sequence elsewhere) | mask (the model's own attention with a mask: block-diagonal from the
    position ids for packed rows, [L, L] for shared prompts; attends over the whole row) | auto
    (varlen on a GPU with torch.nn.attention.varlen, else mask)."""
    logprob_chunk_tokens: int = bounded(4096, ge=0)
    """Tokens per pass through the LM head when computing log-probabilities from the final hidden
    states: the [tokens, vocab] logits never exist at once. 0 = the model's full logits in one
    piece (any model; more memory)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory, ~1/3 more
    compute)."""
    share_prompt: bool = True
    """Preference pairs (DPO family): one row per pair, its prompt computed once for both
    completions (prefix sharing; attention keeps the two completions apart, see
    learner.packed_attention; the same log-probabilities as two rows, fewer tokens). The mask path
    needs sdpa or eager attention. Not with learner.packing (set false to pack pairs as two rows).
    No effect on unpaired (KTO) or RL data."""
    compile: bool = False
    """``torch.compile`` each decoder layer (one compiled graph serves every layer) and the chunked
    LM-head log-prob arithmetic: fused elementwise kernels (norms, rotary, activations, the
    softmax over the vocabulary). The first steps pay the compile time (tens of seconds; again
    once when sequence lengths first change). Not with learner.strategy=fsdp2."""
    mixed_precision: str = "no"
    """no: compute in model.dtype. bf16: float32 parameters, gradients and optimizer state (the
    "master weights"; needs model.dtype=float32) with the forward/backward under bfloat16
    autocast. For bf16 weights without a float32 copy set model.dtype=bfloat16 instead."""
    lr_scheduler: str = "constant"
    """Learning-rate schedule after warmup, stepped once per learner update (trainer step):
    constant | linear | cosine (decay to lr * min_lr_ratio at lr_schedule_steps)."""
    warmup_steps: int = bounded(0, ge=0)
    """Learner updates of linear warmup from lr / warmup_steps up to lr."""
    warmup_ratio: float = bounded(0.0, ge=0, lt=1)
    """Warmup as a fraction of lr_schedule_steps (instead of warmup_steps)."""
    min_lr_ratio: float = bounded(0.0, ge=0, le=1)
    """linear/cosine: the final learning rate as a fraction of lr."""
    lr_schedule_steps: int = bounded(0, ge=0)
    """Length of the schedule in learner updates; conf/ sets it to trainer.max_steps. Needed by
    linear/cosine and warmup_ratio."""


@dataclass
class DataConfig:
    path: str = "builtin:repeat_digit"
    """Prompt source: ``builtin:<task>`` (generated on the fly, see rlft.data.tasks), a local
    jsonl/parquet/csv file, or a hub dataset name."""
    subset: str | None = None
    """Configuration (subset) of a hub dataset, e.g. ``main`` for ``openai/gsm8k``."""
    split: str = "train"
    """Training split of a hub dataset (slices such as ``train[:1000]`` work). A local file has a
    single split, ``train``."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column renames applied when the data is read, ``{new name: dataset column}``, e.g.
    ``{prompt: question, answer: final_answer}``. A renamed column replaces one of the same name."""
    prompt_template: str | None = None
    """Builds the prompt column from the row: ``{name}`` is replaced by column ``name`` (e.g.
    ``"Solve: {prompt}"``, or ``"... {nums} ... {target}"``); ``{{``/``}}`` are literal braces and an
    empty ``{}`` (as in ``\\boxed{}``) stays as it is. Applied before the chat template. None = off."""
    prompt_column: str = "prompt"
    """Column holding the prompt text; every other column reaches reward functions as a keyword."""
    on_too_long: str = "filter"
    """A prompt over ``model.max_prompt_tokens`` (after the templates): ``filter`` = left out when
    the data is read, counted in the metric ``data/filtered_too_long`` and printed; ``error`` = stop."""
    eval_split: str | None = None
    """Held-out evaluation split of the hub dataset ``data.path`` (e.g. ``test``), or of
    ``data.eval_path`` when that is a hub dataset (default ``test`` there)."""
    eval_path: str | None = None
    """A separate evaluation source: a local jsonl/parquet/csv file or a hub dataset name."""
    eval_fraction: float = bounded(0.0, ge=0, lt=1)
    """Hold out this fraction of the training split for evaluation (seeded by ``eval_seed``; the
    training sampler never draws those rows), for data without an evaluation split. 0 = off."""
    eval_size: int = bounded(0, ge=0)
    """At most this many evaluation rows (a seeded subset; 0 = all). For ``builtin:`` tasks: the
    number of evaluation rows generated (required for evaluation there)."""
    eval_seed: int = bounded(0, ge=0)
    """Seed of the held-out split, the evaluation subset and built-in evaluation rows; kept apart
    from ``trainer.seed`` so that runs with different seeds are evaluated on the same rows."""
    chosen_column: str = "chosen"
    """Preference data: the preferred response (text or a list of chat messages)."""
    rejected_column: str = "rejected"
    """Preference data: the dispreferred response (text or a list of chat messages)."""
    completion_column: str = "completion"
    """Unpaired preference data (KTO): the response."""
    label_column: str = "label"
    """Unpaired preference data (KTO): true if the response is desirable."""
    global_prompts_per_step: int = bounded(8, ge=1)
    """B: prompts drawn per RL step (each expanded to algorithm.group_size samples)."""
    apply_chat_template: bool = True
    """Wrap each prompt as a user message with the tokenizer's chat template."""
    system_prompt: str | None = None
    """Optional system message placed before each prompt when the chat template is used."""


@dataclass
class RewardModelConfig:
    path: str | None = None
    """Sequence-classification reward model (hub id or directory) scored on its own actor; its
    score is added to the reward functions' weighted sum. None = no reward model."""
    weight: float = bounded(1.0)
    """Weight of the reward model's score in the sample reward."""
    num_cpus: float = bounded(1.0, ge=0)
    """CPUs Ray reserves for the reward-model actor."""
    num_gpus: float = bounded(0.0, ge=0)
    """GPUs Ray reserves for the reward-model actor."""
    per_device_samples_per_batch: int = bounded(32, ge=1)
    """Samples per reward-model forward pass."""
    max_tokens: int = bounded(0, ge=0)
    """Longest (prompt, completion) text in tokens the reward model sees; a longer one loses tokens
    from its left (the start of the prompt first), so the completion's end is kept. 0 = the
    model's own limit (``max_position_embeddings``)."""


@dataclass
class RewardConfig:
    functions: list[str] = field(default_factory=list)
    """Reward functions as ``path/to/file.py:function`` or ``module.sub:function``."""
    weights: list[float] = bounded(default_factory=list)
    """One weight per function; empty = 1.0 each. The sample reward is the weighted sum."""
    failure_reward: float = bounded(0.0)
    """Reward a sample gets from a function that raised, timed out, returned the wrong length or a
    non-number."""
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Constant keyword arguments per function, keyed by its metric name (the function's name;
    ``_2``, ``_3``... for repeats); on the command line with a ``+`` as the keys are new:
    ``+reward.params.regex_match.pattern='^\\d+$'``. A parameter the function does not have is an
    error at start."""
    timeout_s: float = bounded(30.0, gt=0)
    """Seconds one call may take (a per-sample function: one sample; a batch function: the whole
    batch); past it the samples get failure_reward and count in reward/<fn>/timeouts."""
    max_concurrency: int = bounded(8, ge=1)
    """Calls in flight at once: worker processes (executor=process) or threads, and awaited
    coroutines of async functions."""
    max_failed_steps: int = bounded(3, ge=0)
    """Stop the run once one function has failed (raised, timed out, bad output) on every sample
    of this many steps in a row, naming it and its last error; 0 = never stop (its samples keep
    getting failure_reward)."""
    executor: str = "process"
    """Where sync reward functions run. process: a pool of spawned worker processes; a call past
    timeout_s is killed with its worker, which is replaced. thread: threads of the trainer's
    process; cheaper, shares memory, but a call past timeout_s cannot be stopped: it is abandoned
    and keeps running. Async functions are always awaited in the trainer's process."""
    model: RewardModelConfig = field(default_factory=RewardModelConfig)


@dataclass
class TeacherConfig:
    path: str | None = None
    """On-policy distillation (algorithm=opd): a frozen teacher model (hub id or directory; the
    policy's tokenizer and vocabulary), scored on the student's own samples like the reference
    model, on every learner. Its per-token log-probs reach the advantage estimator. None = none."""


@dataclass
class WeightsConfig:
    transport: str = "auto"
    """How new weights reach the rollout workers: auto (cuda_ipc when every rollout worker is on
    the learner's GPU, collective when every one is on another GPU, else object_store; decided at
    start from the devices the actors report) | object_store (Ray's object store; works
    everywhere) | collective (bucketed broadcast from learner rank 0: NCCL across GPUs, gloo on
    CPU; needs cluster.mode=ray) | cuda_ipc (bucketed CUDA IPC handles for workers on the
    learner's GPU)."""
    bucket_mb: float = bounded(512.0, gt=0)
    """MiB per flat bucket (collective, cuda_ipc); a larger tensor gets a bucket of its own."""


@dataclass
class ClusterConfig:
    mode: str = "ray"
    """ray: every worker is a Ray actor. local: the same classes in this process (for pdb)."""
    address: str = ""
    """Ray cluster address; empty starts a local Ray instance."""
    num_cpus: int | None = bounded(None, ge=1)
    """CPUs for a locally started Ray instance; default = all of this machine's."""
    colocate: bool = False
    """Place learner rank i and rollout worker i in one placement-group bundle, sharing its devices
    (each takes half of ``learner.num_gpus_per_worker``); rollout workers sleep (release memory)
    while the learner trains and wake up for the weight sync. Needs rollout.num_workers ==
    learner.num_workers and trainer.async=false."""


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
    """Write metrics.jsonl and samples.jsonl in the run directory."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    samples_per_step: int = bounded(4, ge=0)
    """Completions per step written to samples.jsonl (0 = none)."""
    token_stats: bool = False
    """Also write, for each of those completions, its tokens and per token the sampler's and the
    learner's log-probability, the entropy and the advantage (what ``rlft board`` colours tokens
    by): about 50 bytes per completion token in samples.jsonl, and one extra no-grad forward pass
    of the policy over those samples per step (plus, for PPO or an in-reward KL, the critic or
    reference over the step's samples)."""


@dataclass(init=False)  # __init__ is written out below (the `async` field)
class TrainerConfig:
    max_steps: int = bounded(100, ge=1)
    """Number of RL steps (one rollout + one policy update each)."""
    seed: int = bounded(0, ge=0)
    """Seed for prompt sampling, generation and initialisation of everything random."""
    output_dir: str = "runs/${now:%Y-%m-%d_%H-%M-%S}"
    """Run directory: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/."""
    checkpoint_every: int = bounded(0, ge=0)
    """Save a checkpoint every N steps (and at the end); 0 = only at the end."""
    resume: str = "auto"
    """auto (newest complete checkpoint in output_dir, if any) | never | <checkpoint dir>."""
    overwrite: bool = False
    """Delete the results of an earlier run in output_dir (config.yaml, metrics.jsonl,
    samples.jsonl, checkpoints/) and start afresh. Without it a run never drops them silently: it
    refuses to start afresh over logged steps, or when its checkpoint leaves nothing to do."""
    keep_checkpoints: int = bounded(2, ge=0)
    """How many recent checkpoints to keep; 0 = keep all."""
    # `async` is a Python keyword, so its field is declared through the class namespace; the
    # YAML/CLI key is `trainer.async` and code reads `cfg.trainer.asynchronous`.
    # repr/compare off and __init__ written out: dataclasses would write the keyword into
    # generated code. It is an init field, so dataclasses.replace() keeps it.
    vars()["async"] = field(default=False, repr=False, compare=False)
    __annotations__["async"] = "bool"
    """trainer.async: overlap the generation of the next steps' rollouts with the learner's update
    (one-step-off and deeper pipelining; samples are up to ``max_staleness`` policy versions old).
    Needs cluster.colocate=false."""
    max_staleness: int = bounded(1, ge=0)
    """With trainer.async: how many policy versions older than the learner a trained-on sample may
    be; rollouts for step k are started no earlier than the weights of version
    k - 1 - max_staleness are sent, so this is also how many steps generation runs ahead (>= 1)."""
    max_restarts: int = bounded(3, ge=0)
    """If a Ray actor (rollout worker, learner, reward model) dies, kill the others, start them
    afresh and continue from the newest checkpoint (or the start), at most this many times."""

    def __init__(self, **values: Any) -> None:
        """Fields by keyword, ``async`` too (``TrainerConfig(**{"async": True})``); the others keep
        their defaults (every field has a plain default)."""
        for f in fields(self):
            setattr(self, f.name, values.pop(f.name, f.default))
        if values:
            raise TypeError(f"TrainerConfig has no fields {sorted(values)}")

    @property
    def asynchronous(self) -> bool:
        """``trainer.async``."""
        return getattr(self, "async")


@dataclass
class EvalConfig:
    every_steps: int = bounded(0, ge=0)
    """Evaluate every N training steps (and after the last) with the rollout workers' current
    weights; 0 = no evaluation during training (``rlft eval <checkpoint>`` still works). The rows
    are the held-out split the data config names (data.eval_split, data.eval_path,
    data.eval_fraction or, for builtin tasks, data.eval_size generated rows)."""
    k: int = bounded(4, ge=1)
    """Samples per evaluation prompt; metrics eval/mean@k and eval/pass@j for j = 1, 2, 4, ..., k."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings of evaluation, apart from training's rollout.sampling."""
    reward_functions: list[str] = field(default_factory=list)
    """Reward functions that score evaluation samples; empty = reward.functions."""
    reward_weights: list[float] = bounded(default_factory=list)
    """One weight per eval.reward_functions entry; empty = 1.0 each (or reward.weights when
    eval.reward_functions is empty)."""
    pass_threshold: float = bounded(1.0)
    """A sample counts as correct (for pass@j) when its reward is at least this."""
    seed: int = bounded(0, ge=0)
    """Seed of evaluation sampling: the same at every evaluation, so evaluations compare."""


@dataclass
class EnvConfig:
    path: str | None = None
    """Multi-turn environment class (``path/to/file.py:Class`` or ``module.sub:Class``; see
    rlft.envs), or ``tools`` for the generic tool environment. None = single-turn rollouts."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the environment's constructor (``+env.params.name=value``)."""
    max_turns: int = bounded(4, ge=1)
    """Assistant turns per episode at most (finish reason ``max_turns``)."""
    max_episode_tokens: int = bounded(1024, ge=2)
    """Tokens per episode at most, prompt and every turn included; a longer episode is cut there
    (finish reason ``max_tokens``, counted in ``env/truncated``). Keep it within the model's context."""
    max_new_tokens_per_turn: int = bounded(0, ge=0)
    """Tokens one assistant turn may generate; 0 = rollout.sampling.max_new_tokens."""
    step_timeout_s: float = bounded(30.0, gt=0)
    """Seconds an environment's step (or final_reward) may take; past it the episode ends with
    finish reason ``timeout`` and env.failure_reward."""
    failure_reward: float = bounded(0.0)
    """Reward of an episode whose environment raised, broke the contract or timed out."""
    tools: list[str] = field(default_factory=list)
    """env=tools: the tools, ``python`` (rlft's sandbox) or functions by path (``my_tools.py:search``)."""
    tool_parser: str = "hermes"
    """How tool calls are read from the model's text: ``hermes`` (``<tool_call>{json}</tool_call>``,
    Qwen/Hermes) or ``path/to/file.py:fn`` with ``fn(text) -> list[rlft.envs.tools.ToolCall]``."""
    tool_timeout_s: float = bounded(10.0, gt=0)
    """env=tools: seconds one tool call may take; past it the model gets an error message back."""
    chat_template: str | None = None
    """Jinja chat template episodes are rendered with; None = the tokenizer's (e.g. a plain
    concatenation of the contents for a base model without one)."""


@dataclass
class AgentConfig:
    path: str | None = None
    """Your agent, ``my_agent.py:run`` or ``module.sub:run``: ``run(client, row)`` (sync or
    ``async def``) makes any number of calls with ``client`` (an ``openai`` client pointed at the
    rollout worker's endpoint) and returns the episode's reward, a dict of named rewards, or None
    (no opinion). Replaces reward.functions. Set at most one of path, verifiers, openenv."""
    verifiers: str | None = None
    """A ``verifiers`` environment (``my_env.py:load_environment``: an Environment, or a function
    returning one); each dataset row is one rollout of it through the endpoint, its rubric the reward."""
    openenv: str | None = None
    """An ``openenv-core`` environment (``my_env.py:MyEnv``: an Environment class or a factory);
    each episode resets it with the row and steps it with the model's replies."""
    max_concurrency: int = bounded(8, ge=1)
    """Episodes in flight at once on each rollout worker."""
    timeout_s: float = bounded(300.0, gt=0)
    """Seconds one episode may take; past it the episode fails (counted in agent/timeouts)."""
    failure_reward: float | None = bounded(0.0)
    """Reward of an episode whose agent raised or timed out, on the calls it made; None = its calls
    are not trained on."""
    reward_weights: dict[str, float] = field(default_factory=dict)
    """Weights of named rewards (an agent returning a dict); a name not listed weighs 1.0."""
    max_turns: int = bounded(8, ge=1)
    """openenv adapter: model replies per episode."""
    tool_parser: str = "hermes"
    """How the endpoint reads tool calls from a reply to a request that offers ``tools`` (as
    env.tool_parser): ``hermes`` (``<tool_call>{json}</tool_call>``) or ``path/to/file.py:fn``."""
    max_calls_per_episode: int = bounded(64, ge=1)
    """Requests one episode may make; more are refused (HTTP 429)."""
    max_context_tokens: int = bounded(2048, ge=2)
    """Longest prompt a request may render to, in tokens (HTTP 400 past it)."""
    max_request_bytes: int = bounded(1_000_000, ge=1)
    """Largest request body the endpoint reads (HTTP 413 past it)."""
    max_requests_in_flight: int = bounded(256, ge=1)
    """Requests the endpoint handles at once; more are refused (HTTP 429)."""
    host: str = "127.0.0.1"
    """Address the endpoint binds to; the node's own address only if agents run on other nodes."""
    port: int = bounded(0, ge=0, le=65535)
    """Port of the endpoint; 0 = a free one."""
    batch_wait_s: float = bounded(0.005, ge=0)
    """How long the endpoint waits for more requests before it calls the engine (it calls at once
    when every running episode has a request waiting)."""


@dataclass
class RLFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)


def register_configs() -> None:
    """Register the root schema; ``conf/config.yaml`` builds on it, so every group is validated."""
    ConfigStore.instance().store(name="rlft_schema", node=RLFTConfig)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls`` (read from its source), by field name."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    docs: dict[str, str] = {}
    name = None
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            # TrainerConfig's `async`: __annotations__["async"] = "bool"
            key = node.targets[0].slice
            name = key.value if isinstance(key, ast.Constant) else None
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and name:
            docs[name] = inspect.cleandoc(node.value.value)
            name = None
        else:
            name = None
    return docs


def describe_keys(node: Any, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, value, docstring) of every leaf key under the dataclass instance ``node``, whose
    keys start with ``prefix`` (e.g. ``algorithm.``), nested groups depth first."""
    docs = field_docs(type(node))
    rows: list[tuple[str, str, Any, str]] = []
    for f in fields(node):
        value = getattr(node, f.name)
        if hasattr(type(value), "__dataclass_fields__"):
            rows += describe_keys(value, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", str(f.type), value, docs.get(f.name, "")))
    return rows
