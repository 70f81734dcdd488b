"""Learner: owns the policy, the optional frozen reference model, the optional PPO critic and
their optimizers.

A plain class; ``rlft.cluster`` runs it as a Ray actor or in-process. Advantages and losses come
from the pure functions in ``rlft.algorithms``, picked by name from the config.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rlft.algorithms import (
    AdvantageInput,
    adaptive_kl_coef,
    clipped_value_loss,
    get_advantage,
    get_kl,
    get_loss_agg,
    get_policy_loss,
    truncated_is_weights,
)
from rlft.attention import use_varlen_attention, wants_varlen_attention
from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.learner.batch import Batch, Sample, collate, pack, plan_micro_batches
from rlft.learner.distributed import DataParallel, RendezvousSpec, Shard, open_rendezvous
from rlft.learner.optim import autocast, build_optimizer, build_scheduler
from rlft.modeling import (
    causal_lm_logprobs,
    compile_decoder_layers,
    default_device,
    enable_gradient_checkpointing,
    load_model,
    load_policy,
    load_tokenizer,
    load_value_model,
    token_values,
)
from rlft.weights import (
    BucketExporter,
    BucketPayload,
    CollectiveSender,
    WeightGroupSpec,
    WeightUpdate,
    gpu_uuid,
)
from rlft.weights.buckets import sync_tensors
from rlft.weights.transport import MiB

log = logging.getLogger("rlft.learner")


class Learner:
    """One policy update per :meth:`train_step`; ``policy_version`` counts them."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        learner_cfg: LearnerConfig,
        algorithm_cfg: AlgorithmConfig,
        sampling_cfg: SamplingConfig,
        seed: int,
        num_threads: int = 0,
    ):
        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.cfg, self.algo, self.sampling = learner_cfg, algorithm_cfg, sampling_cfg
        self.device = default_device()
        self.pad_token_id = load_tokenizer(model_cfg).pad_token_id
        # eval(): no dropout, so the update scores tokens exactly as the sampler did (gradients still flow).
        self.model = load_policy(model_cfg, self.device).eval()
        if learner_cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.lora = model_cfg.lora.rank > 0
        # With LoRA the reference is the base model with the adapters disabled: no second copy.
        self.ref_model = None
        if self.needs_reference() and not self.lora:
            self.ref_model = load_model(model_cfg, self.device).eval().requires_grad_(False)
        if learner_cfg.packing and wants_varlen_attention(learner_cfg.packed_attention, self.device):
            for model in (self.model, self.ref_model):
                if model is not None:
                    use_varlen_attention(model)
        if learner_cfg.compile:
            for model in (self.model, self.ref_model):
                if model is not None:
                    compile_decoder_layers(model)
        self.critic = None
        if algorithm_cfg.kind == "online" and algorithm_cfg.advantage == "gae":
            self.critic = load_value_model(model_cfg, self.device).eval()
        self._build_optimizers()
        self.advantage_fn = get_advantage(algorithm_cfg.advantage)
        self.policy_loss = get_policy_loss(algorithm_cfg.policy_loss)
        self.loss_agg = get_loss_agg(algorithm_cfg.loss_agg)
        self.kl_estimator = get_kl(algorithm_cfg.kl.estimator)
        self.token_mean = get_loss_agg("token_mean")
        self.kl_coef = algorithm_cfg.beta
        self.policy_version = 0
        self.skipped_updates = 0
        self.dp: DataParallel | None = None
        """Membership of the learners' process group when there are several (``join_data_parallel``)."""

    def needs_reference(self) -> bool:
        """Whether a frozen copy of the initial policy is loaded (for the KL term)."""
        return self.algo.beta > 0

    def _build_optimizers(self) -> None:
        """AdamW and the LR schedule of the policy (and critic), over their current parameters."""
        c = self.cfg
        self.optimizer = build_optimizer(self.model.parameters(), c, c.lr)
        self.scheduler = build_scheduler(self.optimizer, c)
        self.critic_optimizer = self.critic_scheduler = None
        if self.critic is not None:
            self.critic_optimizer = build_optimizer(self.critic.parameters(), c, c.critic_lr)
            self.critic_scheduler = build_scheduler(self.critic_optimizer, c)

    # --- the update -----------------------------------------------------------------------------

    def train_step(self, samples: list[Sample], shard: Shard | None = None) -> dict[str, float]:
        """Update the policy (and critic) on one RL step's samples; returns learner metrics.

        With several learners ``samples`` are this rank's ``shard`` of the global batch, and the
        metrics are those of the whole batch (equal on every rank)."""
        start = time.perf_counter()
        if shard is None:
            mini_size = self.cfg.global_samples_per_optimizer_step or len(samples)
            sizes = [min(mini_size, len(samples) - lo) for lo in range(0, len(samples), mini_size)]
            shard = Shard(list(range(len(samples))), sizes, len(samples))
        batch = self._prepare(collate(samples, self.pad_token_id).to(self.device), shard)
        if self.algo.tis_cap == 0 and any(s.policy_version < self.policy_version for s in samples):
            # Stale samples (trainer.async) without TIS: the PPO ratio is taken against the
            # sampler's log-probs (the behaviour policy), whose clip bounds the off-policy update.
            # With algorithm.tis_cap > 0 "old" stays the learner's current policy and the truncated
            # IS weights pi_old / pi_sampler correct for the staleness (decoupled PPO) instead.
            batch = replace(batch, old_logprobs=batch.sampler_logprobs)
        totals: dict[str, float] = {}
        for _ in range(self.algo.epochs_per_step):
            lo = 0
            for size in shard.mini_batch_sizes:
                for k, v in self._optimizer_step(batch.select(slice(lo, lo + size))).items():
                    totals[k] = totals.get(k, 0.0) + v
                lo += size
        steps = self.algo.epochs_per_step * len(shard.mini_batch_sizes)
        metrics = {k: v / steps for k, v in totals.items()}
        adv = {"sum": (batch.advantages * batch.completion_mask).sum().item()}
        adv["tokens"] = batch.completion_mask.sum().item()
        adv = adv if self.dp is None else self.dp.sum(adv)
        metrics["advantage/mean"] = adv["sum"] / max(adv["tokens"], 1.0)
        if self.needs_reference() and self.algo.kl.adaptive:
            self.kl_coef = adaptive_kl_coef(
                self.kl_coef, metrics["kl/seq"], self.algo.kl.target, self.algo.kl.horizon, shard.total
            )
        if self.needs_reference():
            metrics["kl_coef"] = self.kl_coef
        # How many policy updates old the oldest sample is (0 when rollout waits for every update).
        metrics["skipped_updates"] = float(self.skipped_updates)
        staleness = float(max(self.policy_version - s.policy_version for s in samples))
        metrics["staleness"] = staleness if self.dp is None else self.dp.max(staleness)
        metrics.update(self._step_lr_schedule())
        self.policy_version += 1
        metrics["policy_version"] = float(self.policy_version)
        metrics["timing/train_s"] = time.perf_counter() - start
        return metrics

    def _prepare(self, batch: Batch, shard: Shard) -> Batch:
        """Old/reference log-probs, old values, then advantages and returns (a pure function).

        With several learners each rank computes the log-probs and values of its own rows; the
        advantage estimator then sees the whole batch (group baselines and batch normalisation
        need every row), gathered on every rank, and each rank keeps its rows."""
        single_update = self.algo.epochs_per_step == 1 and len(shard.mini_batch_sizes) == 1
        # With a single optimizer step the policy is still the one that generated: the update
        # uses its own detached log-probs as "old" and skips this forward pass.
        needs_old = not single_update or self.algo.kl.in_reward
        old = self._no_grad_forward(self._logprobs_of(self.model), batch) if needs_old else None
        ref = self._reference_logprobs(batch) if self.needs_reference() else None
        values = None if self.critic is None else self._no_grad_forward(self._values, batch)
        token_rewards = None
        if self.algo.kl.in_reward and ref is not None:
            token_rewards = -self.kl_coef * self.kl_estimator(old, ref) * batch.completion_mask
        rows = {
            "rewards": batch.rewards,
            "group_ids": batch.group_ids,
            "mask": batch.completion_mask,
            "token_rewards": token_rewards,
            "values": values,
        }
        if self.dp is not None:
            rows = self.dp.gather_rows(rows, shard.indices, shard.total)
        advantages, returns = self.advantage_fn(AdvantageInput(**rows), self.algo)
        if self.dp is not None:
            own, width = torch.tensor(shard.indices, device=self.device), batch.input_ids.shape[1]
            advantages, returns = advantages[own, :width], returns[own, :width]
        return replace(
            batch,
            advantages=advantages,
            returns=returns,
            old_logprobs=old,
            ref_logprobs=ref,
            old_values=values,
        )

    def _reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """[N, L] log-probs under the frozen reference: its own copy, or the base with LoRA off."""
        if self.ref_model is not None:
            return self._no_grad_forward(self._logprobs_of(self.ref_model), batch)
        with self.model.disable_adapter():
            return self._no_grad_forward(self._logprobs_of(self.model), batch)

    def _optimizer_step(self, batch: Batch) -> dict[str, float]:
        """Gradient accumulation over micro-batches, normalised over the whole mini-batch."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        counts = {"num_tokens": batch.completion_mask.sum().item(), "num_seqs": float(len(batch))}
        # Normalise by the whole mini-batch's counts, over all ranks: the summed gradient is then
        # the gradient of the whole mini-batch.
        counts = counts if self.dp is None else self.dp.sum(counts)
        norm = {**counts, "horizon": self.sampling.max_new_tokens}
        stats: dict[str, float] = {}

        def add(name: str, value: torch.Tensor) -> None:
            stats[name] = stats.get(name, 0.0) + value.item()

        plan = self._micro_batches(batch)
        for rows in plan:
            mb = batch.select(rows)
            mask = mb.completion_mask
            logprobs, entropy = self._logprobs(self.model, mb, entropy=True)
            old = logprobs.detach() if mb.old_logprobs is None else mb.old_logprobs
            per_token, info = self.policy_loss(logprobs, old, mb.advantages, mask, self.algo)
            if self.algo.tis_cap > 0:
                per_token = per_token * truncated_is_weights(
                    old, mb.sampler_logprobs, mask, self.algo.tis_cap
                )
            policy_loss = self.loss_agg(per_token, mask, **norm)
            loss = policy_loss
            if mb.ref_logprobs is not None:
                kl = self.kl_estimator(logprobs, mb.ref_logprobs) * mask
                if not self.algo.kl.in_reward:
                    loss = loss + self.kl_coef * self.loss_agg(kl, mask, **norm)
                add("kl", self.token_mean(kl.detach(), mask, **norm))
                add("kl/seq", kl.detach().sum() / norm["num_seqs"])
            entropy_mean = self.token_mean(entropy, mask, **norm)
            if self.algo.entropy_coef > 0:
                loss = loss - self.algo.entropy_coef * entropy_mean
            loss.backward()
            if self.critic is not None:
                values = self._values(mb)
                value_loss = self.token_mean(
                    clipped_value_loss(values, mb.old_values, mb.returns, mask, self.algo.value_clip),
                    mask,
                    **norm,
                )
                value_loss.backward()
                add("loss/value", value_loss)
            add("loss/policy", policy_loss)
            add("entropy", entropy_mean)
            add("clip_frac", self.token_mean(info["clipped"], mask, **norm))
            # How far the engine's numerics (or stale weights) are from the learner's: ~0 when in sync.
            add(
                "logprob_diff/sampler",
                self.token_mean((logprobs.detach() - mb.sampler_logprobs).abs(), mask, **norm),
            )
        if self.dp is not None:  # each rank holds a part of the sums: add them up
            for _ in range(self.dp.extra_passes(len(plan))):
                self._pass_without_effect(batch.select(plan[0]))
            stats = self.dp.sum(stats)
            for model in (self.model, self.critic):
                if model is not None:
                    self.dp.all_reduce_gradients(model)
        stats["grad_norm"] = self._clip_and_step(self.model, self.optimizer)
        if self.critic is not None:
            stats["critic/grad_norm"] = self._clip_and_step(self.critic, self.critic_optimizer)
        return stats

    def _pass_without_effect(self, mb: Batch) -> None:
        """A forward and backward pass of the policy (and critic) that adds nothing to the
        gradients, for FSDP2's lockstep (:meth:`DataParallel.extra_passes`)."""
        (self._logprobs(self.model, mb, entropy=True)[0].sum() * 0).backward()
        if self.critic is not None:
            (self._values(mb).sum() * 0).backward()

    def _clip_and_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
        """Clip the gradient and step; a NaN/inf gradient (or loss) skips the update instead, and
        too many skipped updates stop the run."""
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm or float("inf")).item()
        if math.isfinite(norm):
            optimizer.step()
            return norm
        optimizer.zero_grad(set_to_none=True)
        self.skipped_updates += 1
        log.warning("non-finite gradient: update skipped (%d so far)", self.skipped_updates)
        if self.skipped_updates > self.cfg.max_skipped_updates:
            raise RuntimeError(
                f"{self.skipped_updates} updates had a NaN/inf loss or gradient, more than "
                f"learner.max_skipped_updates={self.cfg.max_skipped_updates}: stopping. Lower "
                "learner.lr or check the rewards; the last checkpoint is intact."
            )
        return norm

    def _step_lr_schedule(self) -> dict[str, float]:
        """Advance the learning-rate schedule(s) by one learner update; returns the rate used."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.critic_scheduler is not None:
            self.critic_scheduler.step()
        return {"learner/lr": lr}

    def _micro_batches(self, batch: Batch, unit: int = 1) -> list[torch.Tensor]:
        """Row indices of each micro-batch: ``learner.max_tokens_per_micro_batch`` tokens (packed
        or padded size), else ``learner.per_device_samples_per_micro_batch`` rows; ``unit``
        consecutive rows stay together."""
        c = self.cfg
        lengths = batch.attention_mask.sum(-1).tolist()
        plan = plan_micro_batches(
            lengths, c.per_device_samples_per_micro_batch, c.max_tokens_per_micro_batch, c.packing, unit
        )
        return [torch.tensor(rows, device=self.device) for rows in plan]

    def _logprobs(
        self, model: torch.nn.Module, mb: Batch, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, L] log-probabilities (and entropies) of ``mb``'s completion tokens under ``model`` at
        the sampling temperature, 0 elsewhere: one packed row with ``learner.packing``, else the
        padded rows; LM head in chunks of ``learner.logprob_chunk_tokens``."""
        options = {
            "temperature": self.sampling.temperature,
            "chunk_tokens": self.cfg.logprob_chunk_tokens,
            "entropy": entropy,
            "compiled": self.cfg.compile,
        }
        with autocast(self.cfg, self.device):
            if not self.cfg.packing:
                return causal_lm_logprobs(
                    model, mb.input_ids, mb.completion_mask, attention_mask=mb.attention_mask, **options
                )
            packed = pack(mb)
            logprobs, entropies = causal_lm_logprobs(
                model, packed.input_ids, packed.completion_mask, **packed.forward_kwargs(), **options
            )
        return packed.unpack(logprobs), None if entropies is None else packed.unpack(entropies)

    def _logprobs_of(self, model: torch.nn.Module) -> Callable[[Batch], torch.Tensor]:
        return lambda mb: self._logprobs(model, mb)[0]

    def _values(self, mb: Batch) -> torch.Tensor:
        with autocast(self.cfg, self.device):
            return token_values(self.critic, mb.input_ids, mb.attention_mask)

    @torch.no_grad()
    def _no_grad_forward(self, forward: Callable[[Batch], torch.Tensor], batch: Batch) -> torch.Tensor:
        """[N, L] per-token outputs of ``forward`` over ``batch``, in micro-batches."""
        out = torch.zeros(batch.input_ids.shape, device=self.device)
        plan = self._micro_batches(batch)
        for rows in plan:
            mb = batch.select(rows)
            out[rows, : mb.input_ids.shape[1]] = forward(mb).float()
        for _ in range(0 if self.dp is None else self.dp.extra_passes(len(plan))):
            forward(batch.select(plan[0]))  # FSDP2 lockstep: every rank runs as many passes
        return out

    def completion_logprobs(self, samples: list[Sample]) -> list[list[float]]:
        """The current policy's log-probability of each completion token (e.g. to check that the
        rollout engine samples from the same weights)."""
        batch = collate(samples, self.pad_token_id).to(self.device)
        logprobs = self._no_grad_forward(self._logprobs_of(self.model), batch)
        return [row[mask.bool()].tolist() for row, mask in zip(logprobs, batch.completion_mask, strict=True)]

    @torch.no_grad()
    def token_stats(self, samples: list[Sample], rows: list[int]) -> list[dict[str, list[float]]]:
        """Per completion token of ``samples[i]`` for each ``i`` in ``rows`` (``tracking.token_stats``):
        the current policy's log-probability (``learner_logprob``; call it before the step's update,
        so that its gap to the sampler's is the rollout/learner mismatch), its entropy and the
        advantage the update will use, each rounded to four decimals.

        ``samples`` is the whole step (advantages need every group; PPO's critic values and an
        in-reward KL are computed over all of it). It runs on this learner alone (a data-parallel
        group's rank 0; with fsdp2 every rank runs it on the same samples, in lockstep), so the
        data-parallel gathering is off meanwhile."""
        dp, self.dp = self.dp, None
        try:
            whole = Shard(list(range(len(samples))), [len(samples)], len(samples))
            batch = self._prepare(collate(samples, self.pad_token_id).to(self.device), whole)
            picked = batch.select(torch.tensor(rows, device=self.device))
            logprobs, entropy = self._logprobs(self.model, picked, entropy=True)
        finally:
            self.dp = dp
        out = []
        for row, mask in enumerate(picked.completion_mask.bool()):
            values = {
                "learner_logprob": logprobs[row],
                "entropy": entropy[row],
                "advantage": picked.advantages[row],
            }
            out.append({k: [round(x, 4) for x in v[mask].float().tolist()] for k, v in values.items()})
        return out

    # --- weights and checkpoints ----------------------------------------------------------------

    def get_weights(self, bucket_bytes: int = 512 * MiB) -> WeightUpdate:
        """The policy's weights packed in CPU buckets of about ``bucket_bytes``, and their version,
        for the rollout workers: what ``sync_tensors`` picks (with LoRA only the adapters, tied
        weights once)."""
        if self.dp is not None and self.dp.sharded:  # gathered on rank 0 (every rank calls this)
            # Tied weights once, under their first name, as unique_named_tensors does: the
            # gathered copies no longer share memory, but named_parameters() lists a tie once.
            own = {n for n, _ in self.model.named_parameters()} | {n for n, _ in self.model.named_buffers()}
            tensors = {n: t for n, t in self.dp.full_state_dict(self.model).items() if n in own}
        else:
            tensors = sync_tensors(self.model)
        return WeightUpdate.pack(tensors, self.policy_version, bucket_bytes)

    def save_checkpoint(self, path: str) -> None:
        """Write model(s), optimizer(s), LR schedule(s) and RNG states into the (new) directory ``path``.

        With several learners rank 0 writes. Under ``learner.strategy=dp`` every rank holds the
        same weights and optimizer state; under ``fsdp2`` every rank first takes part in gathering
        them whole on rank 0 (in CPU memory). Either way the weights are plain Hugging Face
        directories, the same as one learner's."""
        sharded = self.dp is not None and self.dp.sharded
        whole = {}
        if sharded:
            for name, model, optimizer in self._trained_models():
                whole[name] = (self.dp.full_state_dict(model), self.dp.full_optimizer_state(model, optimizer))
        if self.dp is not None and self.dp.rank != 0:
            return
        out = Path(path)
        state = {
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "optimizer_by_name": sharded,
        }
        for name, model, optimizer in self._trained_models():
            key = "optimizer" if name == "policy" else f"{name}_optimizer"
            if sharded:
                model.save_pretrained(out / name, state_dict=whole[name][0])
                state[key] = whole[name][1]
            else:
                model.save_pretrained(out / name)
                state[key] = optimizer.state_dict()
        if self.critic is not None:
            state["critic_scheduler"] = self.critic_scheduler.state_dict()
        torch.save(state, out / "learner_state.pt")
        meta = {"policy_version": self.policy_version, "kl_coef": self.kl_coef}
        (out / "learner.json").write_text(json.dumps(meta))

    def load_checkpoint(self, path: str) -> None:
        """Restore what :meth:`save_checkpoint` wrote (every rank reads it; under fsdp2 rank 0
        reads the tensors and hands each rank its shards)."""
        ckpt = Path(path)
        state = torch.load(ckpt / "learner_state.pt", weights_only=False)
        sharded = self.dp is not None and self.dp.sharded
        if state.get("optimizer_by_name", False) != sharded:
            raise ValueError(
                f"{ckpt} was written with learner.strategy={'fsdp2' if not sharded else 'dp'} (its "
                "optimizer state is laid out for it): resume it with that strategy"
            )
        for name, model, optimizer in self._trained_models():
            key = "optimizer" if name == "policy" else f"{name}_optimizer"
            if sharded:
                main = self.dp.rank == 0
                self.dp.load_full_state_dict(model, _read_weights(model, ckpt / name) if main else {})
                self.dp.load_full_optimizer_state(model, optimizer, state[key] if main else {})
            else:
                _load_weights(model, ckpt / name)
                optimizer.load_state_dict(state[key])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic is not None:
            self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        meta = json.loads((ckpt / "learner.json").read_text())
        self.policy_version, self.kl_coef = meta["policy_version"], meta["kl_coef"]

    def _trained_models(self) -> list[tuple[str, torch.nn.Module, torch.optim.Optimizer]]:
        """(checkpoint subdirectory, model, optimizer) of the policy and, for PPO, the critic."""
        models = [("policy", self.model, self.optimizer)]
        if self.critic is not None:
            models.append(("critic", self.critic, self.critic_optimizer))
        return models

    # --- data parallelism (called by rlft.learner.group.LearnerGroup) -----------------------------

    def open_data_parallel(self, world_size: int) -> RendezvousSpec:
        """Rank 0: open the learners' rendezvous; returns what every rank passes to ``join_data_parallel``."""
        spec, self._dp_store = open_rendezvous(world_size, self.device)
        return spec

    def join_data_parallel(self, spec: RendezvousSpec, rank: int) -> None:
        """Join the learners' process group as ``rank`` (all ranks call this at once) and start
        from rank 0's weights."""
        self.dp = DataParallel(spec, rank, self.device, store=self._dp_store if rank == 0 else None)
        for model in (self.model, self.critic):
            if model is not None:
                self.dp.broadcast_module(model)
        if self.cfg.strategy == "fsdp2":
            for model in (self.model, self.ref_model, self.critic):
                if model is not None:
                    self.dp.shard(model)
            self._build_optimizers()  # over the sharded parameters

    # --- weight-sync endpoints (called by the transports in rlft.weights) ------------------------

    def weight_sync_device(self) -> str | None:
        """``weights.transport=auto``: the UUID of this learner's GPU, or None on the CPU."""
        return gpu_uuid(self.device)

    def open_weight_group(self, bucket_bytes: int, world_size: int) -> WeightGroupSpec:
        """Collective transport: plan the buckets and open the group's rendezvous (this learner is
        rank 0); returns what the rollout workers need to join."""
        self._weight_sender = CollectiveSender(self.model, bucket_bytes, world_size)
        return self._weight_sender.spec

    def join_weight_group(self) -> None:
        """Collective transport: join as rank 0, together with the workers' ``join_weight_group``."""
        self._weight_sender.join()

    def broadcast_weights(self) -> int:
        """Collective transport: broadcast the policy version and every bucket; returns the bytes."""
        return self._weight_sender.send(self.policy_version)

    def prepare_weight_buckets(self, bucket_bytes: int) -> int:
        """CUDA IPC transport: plan the buckets and allocate the staging buffer; returns their number."""
        self._bucket_exporter = BucketExporter(self.model, bucket_bytes)
        return self._bucket_exporter.num_buckets

    def export_weight_bucket(self, index: int, num_receivers: int) -> list[BucketPayload]:
        """CUDA IPC transport: pack bucket ``index``; one handle (or, on the CPU, copy) per receiver."""
        return self._bucket_exporter.export(index, self.policy_version, num_receivers)


def _read_weights(model: torch.nn.Module, directory: Path) -> dict[str, torch.Tensor]:
    """The full-model tensors of a ``save_pretrained`` directory, checked against ``model``'s
    names (tied copies, which the file leaves out, may be missing)."""
    from safetensors.torch import load_file

    weights = load_file(directory / "model.safetensors")
    unexpected = sorted(weights.keys() - model.state_dict().keys())
    if unexpected:
        raise RuntimeError(f"checkpoint {directory} does not match the model: unexpected {unexpected}")
    return weights


def _load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load ``save_pretrained`` weights in place; only tied copies may be missing from the file.
    A LoRA policy's directory holds only its adapters."""
    from safetensors.torch import load_file

    adapters = directory / "adapter_model.safetensors"
    if adapters.is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(adapters))
        if result.unexpected_keys:
            raise RuntimeError(f"adapters in {directory} do not match the model: {result.unexpected_keys}")
        return
    weights = load_file(directory / "model.safetensors")
    result = model.load_state_dict(weights, strict=False)
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in weights}
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"checkpoint {directory} does not match the model: "
            f"missing {missing}, unexpected {result.unexpected_keys}"
        )
