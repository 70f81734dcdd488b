"""Learner: owns the policy, the optional frozen reference model and the optimizer.

A plain class; ``rlft.cluster`` runs it as a Ray actor or in-process. The loss itself comes from
the pure functions in ``rlft.algorithms``, picked by name from the config.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from rlft.algorithms import get_kl, get_loss_agg, get_policy_loss
from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.learner.batch import Batch, Sample, collate
from rlft.modeling import default_device, load_model, load_tokenizer, token_logprobs
from rlft.weights import WeightUpdate


class Learner:
    """One policy-update per :meth:`train_step`; ``policy_version`` counts them."""

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
        self.cfg, self.algo, self.temperature = learner_cfg, algorithm_cfg, sampling_cfg.temperature
        self.device = default_device()
        self.pad_token_id = load_tokenizer(model_cfg).pad_token_id
        self.model = load_model(model_cfg, self.device).train()
        self.ref_model = None
        if algorithm_cfg.beta > 0:
            self.ref_model = load_model(model_cfg, self.device).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=learner_cfg.lr,
            betas=tuple(learner_cfg.betas),
            weight_decay=learner_cfg.weight_decay,
        )
        self.policy_loss = get_policy_loss(algorithm_cfg.policy_loss)
        self.loss_agg = get_loss_agg(algorithm_cfg.loss_agg)
        self.kl_estimator = get_kl(algorithm_cfg.kl.estimator)
        self.token_mean = get_loss_agg("token_mean")
        self.policy_version = 0

    # --- the update -----------------------------------------------------------------------------

    def train_step(self, samples: list[Sample]) -> dict[str, float]:
        """Update the policy on one RL step's samples; returns the step's learner metrics."""
        start = time.perf_counter()
        batch = collate(samples, self.pad_token_id).to(self.device)
        mini_size = self.cfg.global_samples_per_optimizer_step or len(batch)
        single_update = self.algo.epochs_per_step == 1 and mini_size >= len(batch)
        # With a single optimizer step the policy is still the one that generated: ratio = 1.
        old_logprobs = None if single_update else self._logprobs(self.model, batch)
        ref_logprobs = self._logprobs(self.ref_model, batch) if self.ref_model is not None else None
        totals: dict[str, float] = {}
        for _ in range(self.algo.epochs_per_step):
            for lo in range(0, len(batch), mini_size):
                index = slice(lo, lo + mini_size)
                stats = self._optimizer_step(
                    batch.select(index),
                    None if old_logprobs is None else old_logprobs[index],
                    None if ref_logprobs is None else ref_logprobs[index],
                )
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
        steps = self.algo.epochs_per_step * -(-len(batch) // mini_size)
        metrics = {k: v / steps for k, v in totals.items()}
        # How many policy updates old the oldest sample is (0 when rollout waits for every update).
        metrics["staleness"] = float(max(self.policy_version - s.policy_version for s in samples))
        self.policy_version += 1
        metrics["policy_version"] = float(self.policy_version)
        metrics["timing/train_s"] = time.perf_counter() - start
        return metrics

    def _optimizer_step(
        self, batch: Batch, old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None
    ) -> dict[str, float]:
        """Gradient accumulation over micro-batches, normalised over the whole mini-batch."""
        self.optimizer.zero_grad(set_to_none=True)
        norm = {"num_tokens": batch.completion_mask.sum().item(), "num_seqs": float(len(batch))}
        names = ("loss/policy", "loss/kl", "kl", "entropy", "clip_frac", "logprob_diff/sampler")
        stats = dict.fromkeys(names, 0.0)
        micro = self.cfg.per_device_samples_per_micro_batch
        for lo in range(0, len(batch), micro):
            index = slice(lo, lo + micro)
            mb = batch.select(index)
            width = mb.input_ids.shape[1]
            logits = self.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            logprobs, entropy = token_logprobs(logits, mb.input_ids, self.temperature)
            old = logprobs.detach() if old_logprobs is None else old_logprobs[index, :width]
            mask = mb.completion_mask
            per_token, info = self.policy_loss(
                logprobs, old, mb.advantages, mask, clip_low=self.algo.clip_low, clip_high=self.algo.clip_high
            )
            loss = policy_loss = self.loss_agg(per_token, mask, **norm)
            token_mean = self.token_mean
            if ref_logprobs is not None:
                kl = self.kl_estimator(logprobs, ref_logprobs[index, :width])
                kl_loss = self.loss_agg(kl, mask, **norm)
                loss = loss + self.algo.beta * kl_loss
                stats["loss/kl"] += kl_loss.item()
                stats["kl"] += token_mean(kl.detach(), mask, **norm).item()
            loss.backward()
            stats["loss/policy"] += policy_loss.item()
            stats["entropy"] += token_mean(entropy, mask, **norm).item()
            stats["clip_frac"] += token_mean(info["clipped"], mask, **norm).item()
            # How far the engine's numerics (or stale weights) are from the learner's: ~0 when in sync.
            diff = (logprobs.detach() - mb.sampler_logprobs).abs()
            stats["logprob_diff/sampler"] += token_mean(diff, mask, **norm).item()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.max_grad_norm or float("inf")
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
        self.optimizer.step()
        if ref_logprobs is None:
            del stats["loss/kl"], stats["kl"]
        return stats

    def completion_logprobs(self, samples: list[Sample]) -> list[list[float]]:
        """The current policy's log-probability of each completion token (e.g. to check that the
        rollout engine samples from the same weights)."""
        batch = collate(samples, self.pad_token_id).to(self.device)
        logprobs = self._logprobs(self.model, batch)
        return [row[mask.bool()].tolist() for row, mask in zip(logprobs, batch.completion_mask, strict=True)]

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """[N, L] token log-probabilities of ``batch`` under ``model``, in micro-batches."""
        out = torch.zeros(batch.input_ids.shape, device=self.device)
        micro = self.cfg.per_device_samples_per_micro_batch
        for lo in range(0, len(batch), micro):
            mb = batch.select(slice(lo, lo + micro))
            logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            out[lo : lo + micro, : mb.input_ids.shape[1]] = token_logprobs(
                logits, mb.input_ids, self.temperature
            )[0]
        return out

    # --- weights and checkpoints ----------------------------------------------------------------

    def get_weights(self) -> WeightUpdate:
        """The policy's parameters (on the CPU) and their version, for the rollout workers.

        On a CPU learner the tensors are the live parameters, not copies: receivers copy them in.
        """
        tensors = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return WeightUpdate(tensors, self.policy_version)

    def save_checkpoint(self, path: str) -> None:
        """Write model, optimizer and RNG states into the (new) directory ``path``."""
        out = Path(path)
        self.model.save_pretrained(out / "policy")
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
            },
            out / "learner_state.pt",
        )
        (out / "learner.json").write_text(json.dumps({"policy_version": self.policy_version}))

    def load_checkpoint(self, path: str) -> None:
        """Restore what :meth:`save_checkpoint` wrote."""
        from safetensors.torch import load_file

        ckpt = Path(path)
        weights = load_file(ckpt / "policy" / "model.safetensors")
        result = self.model.load_state_dict(weights, strict=False)
        # save_pretrained drops tied copies (lm_head = embeddings); anything else missing is an error.
        own = self.model.state_dict()
        loaded = {own[k].data_ptr() for k in weights}
        missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint {ckpt} does not match the model: missing {missing}, "
                f"unexpected {result.unexpected_keys}"
            )
        state = torch.load(ckpt / "learner_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.policy_version = json.loads((ckpt / "learner.json").read_text())["policy_version"]
