"""Checks of a composed config across keys, beyond what the schema's types express.

:func:`validate` runs before anything starts (``rlft.cli`` turns its ValueError into
``rlft: config error: ...``); each message names the key and the fix. The schema itself, one
documented dataclass per group, is :mod:`rlft.config`.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from rlft.config import HF_DECODES, VLLM_WEIGHT_UPDATES, Range, RLFTConfig
from rlft.rollout.agents import agent_spec


def validate(cfg: RLFTConfig) -> None:
    """Every numeric key within its declared range (:func:`check_ranges`), then the checks across
    keys that a type alone cannot express; raises ValueError naming the key."""
    from rlft.algorithms.registry import ADVANTAGE_ESTIMATORS, AdvantageTraits

    check_ranges(cfg)
    online = cfg.algorithm.kind == "online"
    # What the advantage estimator needs, as its registry entry declares (an unknown name or a
    # bad path fails here, naming the key).
    adv = ADVANTAGE_ESTIMATORS.traits(cfg.algorithm.advantage) if online else AdvantageTraits()
    agent = agent_spec(cfg.agent)  # a ValueError when more than one agent key is set
    checks = [
        (cfg.algorithm.kind in ("online", "preference"), "algorithm.kind must be online or preference"),
        (
            cfg.algorithm.group_size >= adv.min_group_size,
            f"algorithm.group_size must be >= {adv.min_group_size} for algorithm.advantage="
            f"{cfg.algorithm.advantage} (its baseline is the rest of the group)",
        ),
        (
            cfg.algorithm.overlong_buffer_len < cfg.rollout.sampling.max_new_tokens,
            "algorithm.overlong_buffer_len must be smaller than rollout.sampling.max_new_tokens",
        ),
        (
            not cfg.algorithm.kl.in_reward or adv.takes_token_rewards,
            f"algorithm.advantage={cfg.algorithm.advantage} takes the KL as a loss term: "
            "set algorithm.kl.in_reward=false",
        ),
        (
            online or cfg.algorithm.beta > 0 or cfg.algorithm.preference_loss == "orpo",
            f"algorithm.beta must be > 0 for algorithm.preference_loss={cfg.algorithm.preference_loss} "
            "(it is the preference temperature)",
        ),
        (
            online or not (cfg.cluster.colocate or cfg.reward.model.path),
            "algorithm.kind=preference trains on fixed preference data with no rollout workers or "
            "reward model: unset cluster.colocate and reward.model.path",
        ),
        (
            online or not cfg.tracking.token_stats,
            "tracking.token_stats records per-token sampler and learner statistics of online runs; "
            "algorithm.kind=preference samples nothing: set tracking.token_stats=false",
        ),
        (
            cfg.data.on_too_long in ("filter", "error"),
            f"data.on_too_long={cfg.data.on_too_long!r} is not one of ('filter', 'error')",
        ),
        (
            cfg.data.eval_fraction == 0 or (cfg.data.eval_split is None and cfg.data.eval_path is None),
            "data.eval_fraction holds out part of the training split: leave data.eval_split and "
            "data.eval_path unset with it (or set data.eval_fraction=0)",
        ),
        (
            not cfg.data.path.startswith("builtin:")
            or cfg.data.eval_path is not None
            or (cfg.data.eval_fraction == 0 and cfg.data.eval_split is None),
            f"data.path={cfg.data.path!r} is generated: evaluate on data.eval_size generated rows "
            "instead of data.eval_split / data.eval_fraction",
        ),
        (
            len(set(cfg.data.columns.values())) == len(cfg.data.columns),
            f"data.columns={dict(cfg.data.columns)} renames one dataset column twice; each once",
        ),
        (
            cfg.learner.strategy in ("dp", "fsdp2"),
            f"learner.strategy={cfg.learner.strategy!r} is not one of ('dp', 'fsdp2')",
        ),
        (
            cfg.learner.strategy == "dp"
            or (cfg.weights.transport in ("auto", "object_store") and cfg.model.lora.rank == 0),
            "learner.strategy=fsdp2 works with weights.transport=object_store (or auto) and without LoRA "
            "(model.lora.rank=0) so far; use learner.strategy=dp for the others",
        ),
        (
            not (cfg.learner.packing and cfg.learner.share_prompt and _paired_preference(cfg)),
            "learner.packing and learner.share_prompt both apply to preference pairs: set "
            "learner.share_prompt=false to pack each pair as two sequences, or learner.packing=false "
            "to share each pair's prompt",
        ),
        (
            cfg.learner.strategy == "dp" or not cfg.learner.compile,
            "learner.compile=true is not supported with learner.strategy=fsdp2 yet (FSDP2's hooks "
            "would run inside the compiled layers): set learner.compile=false",
        ),
        (
            cfg.learner.num_workers == 1 or cfg.cluster.mode == "ray",
            f"learner.num_workers={cfg.learner.num_workers} needs one process per learner: "
            "use cluster.mode=ray (or learner.num_workers=1)",
        ),
        (all(cfg.rollout.sampling.stop), "rollout.sampling.stop: every stop string must be non-empty"),
        (
            cfg.rollout.engine != "vllm"
            or cfg.model.lora.rank == 0
            or not {"lm_head", "embed_tokens"} & set(cfg.model.lora.target_modules),
            "rollout.engine=vllm cannot put LoRA adapters on lm_head or embed_tokens: leave them out "
            "of model.lora.target_modules, or use rollout.engine=hf",
        ),
        (
            cfg.env.path is None or cfg.eval.every_steps == 0,
            "eval.every_steps evaluates single-turn completions; with env.path it would not play "
            "episodes: set eval.every_steps=0 (the env/ metrics track the training episodes)",
        ),
        (
            cfg.env.path == "tools" or not cfg.env.tools,
            f"env.tools={list(cfg.env.tools)} needs the tool environment: set env=tools (env.path=tools)",
        ),
        (
            cfg.env.path != "tools" or bool(cfg.env.tools),
            "env=tools needs at least one tool: env.tools=[python] or env.tools=[my_tools.py:search]",
        ),
        (
            cfg.env.path is None or agent is None,
            "env.path and an agent (agent.path / agent.verifiers / agent.openenv) are both set; "
            "an agent runs its own environment: set one of them",
        ),
        (cfg.agent.max_concurrency >= 1, "agent.max_concurrency must be >= 1"),
        (cfg.agent.timeout_s > 0, "agent.timeout_s must be > 0"),
        (cfg.agent.max_turns >= 1, "agent.max_turns must be >= 1"),
        (
            min(cfg.agent.max_calls_per_episode, cfg.agent.max_requests_in_flight) >= 1,
            "agent.max_calls_per_episode and agent.max_requests_in_flight must be >= 1",
        ),
        (
            min(cfg.agent.max_context_tokens, cfg.agent.max_request_bytes) >= 1,
            "agent.max_context_tokens and agent.max_request_bytes must be >= 1",
        ),
        (0 <= cfg.agent.port < 65536, "agent.port must be in 0..65535 (0 = a free port)"),
        (
            cfg.model.lora.quantize == "none" or cfg.model.lora.rank > 0,
            "model.lora.quantize=4bit (QLoRA) trains adapters on a quantized base: set model.lora.rank > 0",
        ),
        (
            cfg.learner.mixed_precision == "no" or cfg.model.dtype == "float32",
            f"learner.mixed_precision={cfg.learner.mixed_precision} keeps float32 master weights: set "
            f"model.dtype=float32 (or learner.mixed_precision=no to train the {cfg.model.dtype} weights)",
        ),
        (
            cfg.learner.warmup_steps == 0 or cfg.learner.warmup_ratio == 0,
            "learner.warmup_steps and learner.warmup_ratio are both set: give one of them",
        ),
        (
            cfg.learner.lr_schedule_steps > 0
            or (cfg.learner.lr_scheduler == "constant" and cfg.learner.warmup_ratio == 0),
            f"learner.lr_scheduler={cfg.learner.lr_scheduler} / learner.warmup_ratio need "
            "learner.lr_schedule_steps > 0 (the schedule's length in trainer steps)",
        ),
        (
            bool(cfg.reward.functions or cfg.reward.model.path)
            or not online
            or cfg.env.path is not None
            or agent is not None
            or adv.needs_teacher,
            "no reward: set reward.functions=[path/to/file.py:fn,...] and/or reward.model.path (or an "
            "environment that gives rewards, env.path, or a teacher to distill from, algorithm=opd)",
        ),
        (
            not adv.needs_teacher or bool(cfg.teacher.path),
            f"algorithm.advantage={cfg.algorithm.advantage} distills from a teacher: set teacher.path "
            "to the teacher model (hub id or directory)",
        ),
        (
            not cfg.teacher.path or adv.needs_teacher,
            f"teacher.path is set but algorithm.advantage={cfg.algorithm.advantage} does not use a "
            "teacher: use algorithm=opd (advantage reverse_kl), or unset teacher.path",
        ),
        (
            not cfg.reward.weights or len(cfg.reward.weights) == len(cfg.reward.functions),
            f"reward.weights has {len(cfg.reward.weights)} entries for {len(cfg.reward.functions)} "
            "reward.functions; give one weight per function (or none for 1.0 each)",
        ),
        (
            cfg.reward.executor in ("process", "thread"),
            f"reward.executor={cfg.reward.executor!r} is not one of ('process', 'thread')",
        ),
        (
            cfg.trainer.max_staleness >= 1 or not cfg.trainer.asynchronous,
            "trainer.max_staleness must be >= 1 with trainer.async=true (0 leaves nothing to overlap)",
        ),
        (
            not (cfg.cluster.colocate and cfg.trainer.asynchronous),
            "cluster.colocate=true and trainer.async=true do not go together: colocated rollout "
            "workers sleep while the learner trains, so nothing can overlap; set one of them to false",
        ),
        (
            not cfg.cluster.colocate or cfg.rollout.num_workers == cfg.learner.num_workers,
            f"cluster.colocate=true pairs rollout worker i with learner i on one device set: set "
            f"rollout.num_workers={cfg.learner.num_workers} (= learner.num_workers)",
        ),
        (
            cfg.eval.every_steps == 0 or online,
            "eval.every_steps: evaluation during training is for online RL (algorithm.kind=online)",
        ),
        (
            cfg.eval.every_steps == 0 or bool(cfg.eval.reward_functions or cfg.reward.functions),
            "eval.every_steps > 0 needs reward functions to score with: eval.reward_functions or "
            "reward.functions",
        ),
        (
            not cfg.eval.reward_weights or len(cfg.eval.reward_weights) == len(cfg.eval.reward_functions),
            f"eval.reward_weights has {len(cfg.eval.reward_weights)} entries for "
            f"{len(cfg.eval.reward_functions)} eval.reward_functions; one weight per function",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    _check_names(cfg)


def check_context(cfg: RLFTConfig, context: int | None) -> None:
    """The longest prompt (``model.max_prompt_tokens``) plus the longest completion fits in the
    model's ``context`` positions (None: the model's config names no limit); raises ValueError
    naming both numbers and the fix."""
    if context is None:
        return
    prompt = cfg.model.max_prompt_tokens
    completions = [("rollout.sampling.max_new_tokens", cfg.rollout.sampling.max_new_tokens)]
    if cfg.eval.every_steps:
        completions.append(("eval.sampling.max_new_tokens", cfg.eval.sampling.max_new_tokens))
    for key, new in completions:
        if prompt + new > context:
            fix = (
                f"lower model.max_prompt_tokens to at most {context - new}"
                if new < context
                else f"lower {key} below {context}"
            )
            raise ValueError(
                f"model.max_prompt_tokens={prompt} + {key}={new} = {prompt + new} tokens is more than "
                f"the {context} positions of model.path={cfg.model.path!r} (max_position_embeddings in "
                f"its config): {fix}"
            )


def check_ranges(node: Any, prefix: str = "") -> None:
    """Every field of the config dataclass ``node`` declared with :func:`rlft.config.bounded` (each
    numeric key) holds a value in its range, entries of a list one each; raises ValueError naming
    the first key that does not."""
    for f in fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            check_ranges(value, f"{key}.")
        elif "range" in f.metadata and value is not None:
            allowed: Range = f.metadata["range"]
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bool) or not isinstance(item, int | float) or not allowed.contains(item):
                    entry = " has an entry" if isinstance(value, list) else ""
                    raise ValueError(f"{key}={value!r}{entry} out of range: it must be {allowed}")


def _paired_preference(cfg: RLFTConfig) -> bool:
    """Whether the run trains on preference pairs (DPO family; KTO's examples are unpaired)."""
    from rlft.algorithms.registry import PREFERENCE_LOSSES

    algo = cfg.algorithm
    return algo.kind == "preference" and not PREFERENCE_LOSSES.traits(algo.preference_loss).unpaired


def _check_names(cfg: RLFTConfig) -> None:
    """Every component named in the config exists (each getter raises naming the key and the options)."""
    from rlft import algorithms
    from rlft.attention import PACKED_ATTENTION
    from rlft.cluster import MODES
    from rlft.learner.optim import LR_SCHEDULERS, MIXED_PRECISION
    from rlft.modeling import DTYPES, QUANTIZATIONS
    from rlft.rollout.worker import ENGINES
    from rlft.weights import TRANSPORTS

    algo = cfg.algorithm
    if cfg.rollout.engine != "auto":
        ENGINES.lookup(cfg.rollout.engine)
    if cfg.weights.transport != "auto":
        TRANSPORTS.lookup(cfg.weights.transport)
    if algo.kind == "online":
        algorithms.get_advantage(algo.advantage)
        algorithms.get_policy_loss(algo.policy_loss)
        algorithms.get_loss_agg(algo.loss_agg)
        algorithms.get_kl(algo.kl.estimator)
    else:
        algorithms.get_preference_loss(algo.preference_loss)
    wandb_modes = ("auto", "online", "offline", "disabled")
    for key, value, options in [
        ("rollout.hf.decode", cfg.rollout.hf.decode, HF_DECODES),
        ("rollout.vllm.weight_update", cfg.rollout.vllm.weight_update, VLLM_WEIGHT_UPDATES),
        ("model.dtype", cfg.model.dtype, tuple(DTYPES)),
        ("model.lora.quantize", cfg.model.lora.quantize, QUANTIZATIONS),
        ("learner.mixed_precision", cfg.learner.mixed_precision, MIXED_PRECISION),
        ("learner.lr_scheduler", cfg.learner.lr_scheduler, LR_SCHEDULERS),
        ("learner.packed_attention", cfg.learner.packed_attention, PACKED_ATTENTION),
        ("cluster.mode", cfg.cluster.mode, MODES),
        ("tracking.wandb.mode", cfg.tracking.wandb.mode, wandb_modes),
    ]:
        if value not in options:
            raise ValueError(f"{key}={value!r} is not one of {options}")
