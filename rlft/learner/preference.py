"""PreferenceLearner: the :class:`Learner` with an offline preference update (DPO family, KTO).

Sequences are scored by the sum of their completion tokens' log-probabilities at temperature 1;
the loss is a pure function from ``rlft.algorithms.preference_losses``, picked by
``algorithm.preference_loss``. Checkpoints, weights and the optimizer are the base class's. With
``learner.share_prompt`` a pair's two sequences share one pass over their prompt
(:class:`~rlft.learner.batch.SharedPromptRows`).
"""

from __future__ import annotations

import math
import time

import torch

from rlft.algorithms.preference_losses import KTOInput, PreferenceInput, preference_metrics
from rlft.algorithms.registry import PREFERENCE_LOSSES, get_preference_loss
from rlft.attention import use_shared_prompt_attention, wants_varlen_attention
from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.data.preference import Example, UnpairedExample
from rlft.learner.batch import (
    Batch,
    Sample,
    SharedPromptRows,
    collate,
    collate_shared_prompt,
    plan_micro_batches,
)
from rlft.learner.distributed import Shard
from rlft.learner.learner import Learner
from rlft.learner.optim import autocast
from rlft.modeling import base_model, causal_lm_logprobs

Logps = list[tuple[float, ...]]
"""Per example: (chosen, rejected) summed log-probs of a pair, (completion,) of an unpaired example."""
Rows = Batch | SharedPromptRows
"""A batch of sequences: one per row, or (``learner.share_prompt``) both sequences of a pair per row."""


class PreferenceLearner(Learner):
    """One optimizer step per :meth:`preference_step`; ``policy_version`` counts them.

    A pair is two sequences of one forward pass (chosen, then rejected): two rows, or with
    ``learner.share_prompt`` one row holding the prompt once. A micro-batch holds
    ``learner.per_device_samples_per_micro_batch`` sequences rounded down to whole pairs (at least
    one), or whole pairs up to ``learner.max_tokens_per_micro_batch`` tokens. With LoRA the
    reference is the policy with its adapters disabled.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        learner_cfg: LearnerConfig,
        algorithm_cfg: AlgorithmConfig,
        seed: int,
        num_threads: int = 0,
    ):
        # Default sampling settings: preference losses score sequences at temperature 1.
        super().__init__(model_cfg, learner_cfg, algorithm_cfg, SamplingConfig(), seed, num_threads)
        self.loss_fn = get_preference_loss(algorithm_cfg.preference_loss)
        self.unpaired = PREFERENCE_LOSSES.traits(algorithm_cfg.preference_loss).unpaired
        self.share_prompt = learner_cfg.share_prompt and not self.unpaired
        # Shared-prompt rows: a variable-length flash kernel over each pair's two segments
        # (learner.packed_attention, as for packed rows), or the model's attention with a mask.
        varlen = wants_varlen_attention(learner_cfg.packed_attention, self.device)
        self.segment_attention = self.share_prompt and varlen
        for model in (self.model, self.ref_model) if self.share_prompt else ():
            if model is None:
                continue
            if self.segment_attention:
                use_shared_prompt_attention(model)
            else:
                _check_custom_mask_support(model)

    def needs_reference(self) -> bool:
        return not PREFERENCE_LOSSES.traits(self.algo.preference_loss).reference_free

    def reference_logps(self, batch: list[Example]) -> Logps:
        """The frozen reference's summed completion log-probs of each example (for a cache)."""
        rows = self._collate(batch)
        return [tuple(x) for x in self._sequence_logps(rows, reference=True).view(len(batch), -1).tolist()]

    def preference_step(
        self,
        batch: list[Example],
        ref_logps: Logps | None = None,
        shard: Shard | None = None,
        previous: list[list[int]] | None = None,
    ) -> tuple[dict[str, float], Logps]:
        """One optimizer step on ``batch``; ``ref_logps`` (from :meth:`reference_logps`) saves the
        reference forward pass. Returns the metrics and each example's implicit rewards, shaped
        like ``ref_logps``. With several learners ``batch`` is this rank's ``shard`` of the global
        batch: the loss is the global batch mean and the metrics are the whole batch's; for KTO,
        ``previous`` holds the completion of the example before each one in the global batch."""
        total = len(batch) if shard is None else shard.total
        start = time.perf_counter()
        rows = self._collate(batch)
        ref = None
        if self.needs_reference():
            ref = self._sequence_logps(rows, reference=True) if ref_logps is None else torch.tensor(ref_logps)
            ref = ref.flatten().to(self.device)
        per_example = 1 if self.unpaired else 2  # sequences
        per_row = 2 if self.share_prompt else 1
        sequences = len(batch) * per_example
        # Which sequences are chosen: every other one for pairs, the desirable ones for KTO.
        chosen = (
            torch.tensor([e.desirable for e in batch], device=self.device)
            if self.unpaired
            else torch.arange(sequences, device=self.device) % 2 == 0
        )
        kl = self._kto_kl(batch, previous) if self.unpaired else None

        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"loss": 0.0}
        logps = torch.zeros(sequences, device=self.device)
        rewards = torch.zeros(sequences, device=self.device)
        plan = self._micro_batches(rows, unit=per_example // per_row)
        for part in plan:
            seq = _sequence_index(part, per_row)
            mb_ref = None if ref is None else ref[seq]
            losses, mb_logps, mb_rewards = self._losses(rows.select(part), mb_ref, chosen[seq], kl)
            loss = losses.sum() / total  # the batch mean, accumulated over micro-batches (and ranks)
            loss.backward()
            metrics["loss"] += loss.item()
            logps[seq], rewards[seq] = mb_logps.detach().float(), mb_rewards.detach().float()

        own_rewards = rewards
        if self.dp is not None:  # sum the loss and gradients; metrics over the whole batch
            for _ in range(self.dp.extra_passes(len(plan))):
                self._pass_without_effect(rows.select(plan[0]))
            metrics = self.dp.sum(metrics)
            self.dp.all_reduce_gradients(self.model)
            rows = [i * per_example + j for i in shard.indices for j in range(per_example)]
            whole = self.dp.gather_rows(
                {"logps": logps, "rewards": rewards, "chosen": chosen}, rows, shard.total * per_example
            )
            logps, rewards, chosen = whole["logps"], whole["rewards"], whole["chosen"]
        metrics["grad_norm"] = self._clip_and_step(self.model, self.optimizer)
        metrics.update(self._reward_metrics(logps, rewards, chosen))
        if kl is not None:
            metrics["kl"] = kl.item()
        metrics.update(self._step_lr_schedule())
        self.policy_version += 1
        metrics["policy_version"] = float(self.policy_version)
        metrics["timing/train_s"] = time.perf_counter() - start
        return metrics, [tuple(r) for r in own_rewards.view(len(batch), -1).tolist()]

    def _losses(
        self, mb: Rows, ref: torch.Tensor | None, chosen: torch.Tensor, kl: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example losses of a micro-batch, and the per-sequence policy log-probs and rewards
        (``chosen``: the sequences' desirable labels for KTO)."""
        logps = _per_sequence(mb, self._logprobs_of(self.model)(mb))
        if self.unpaired:
            losses, info = self.loss_fn(KTOInput(logps, ref, chosen, kl), self.algo)
            return losses, logps, info["rewards"]
        lengths = _per_sequence(mb, torch.ones(mb.input_ids.shape, device=self.device))
        data = PreferenceInput(logps[0::2], logps[1::2], lengths[0::2], lengths[1::2])
        if ref is not None:
            data.ref_chosen_logps, data.ref_rejected_logps = ref[0::2], ref[1::2]
        losses, info = self.loss_fn(data, self.algo)
        rewards = torch.stack([info["rewards/chosen"], info["rewards/rejected"]], -1).flatten()
        return losses, logps, rewards

    def _collate(self, batch: list[Example]) -> Rows:
        """One row per completion: chosen, rejected, chosen, ... for pairs (only the token columns
        of :func:`collate`'s batch are used; its RL fields are left at zero), or with
        ``learner.share_prompt`` one row per pair."""
        if self.share_prompt:
            pairs = [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in batch]
            return collate_shared_prompt(pairs, self.pad_token_id).to(self.device)
        if self.unpaired:
            seqs = [(e.prompt_ids, e.completion_ids) for e in batch]
        else:
            seqs = [(e.prompt_ids, c) for e in batch for c in (e.chosen_ids, e.rejected_ids)]
        samples = [Sample(p, c, [0.0] * len(c), 0.0, 0, self.policy_version) for p, c in seqs]
        return collate(samples, self.pad_token_id).to(self.device)

    def _sequence_logps(self, rows: Rows, reference: bool = False) -> torch.Tensor:
        """Summed completion log-probs of each sequence under the policy or the ``reference``,
        without gradient."""
        if reference:
            logprobs = self._reference_logprobs(rows)
        else:
            logprobs = self._no_grad_forward(self._logprobs_of(self.model), rows)
        return _per_sequence(rows, logprobs)

    def _logprobs(
        self, model: torch.nn.Module, mb: Rows, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, L] per-token log-probs (see :meth:`Learner._logprobs`), of shared-prompt rows too."""
        if not isinstance(mb, SharedPromptRows):
            return super()._logprobs(model, mb, entropy)
        _check_sliding_window(model, mb.input_ids.shape[1])
        if self.segment_attention:
            attention = {"shared_prompt": mb.segment_index()}
        else:
            sdpa = base_model(model).config._attn_implementation == "sdpa"
            bias_dtype = torch.bool if sdpa else torch.float32
            attention = {"attention_mask": mb.attention_bias(bias_dtype)}
        with autocast(self.cfg, self.device):
            return causal_lm_logprobs(
                model,
                mb.input_ids,
                mb.score_mask,
                position_ids=mb.position_ids,
                **attention,
                temperature=self.sampling.temperature,
                chunk_tokens=self.cfg.logprob_chunk_tokens,
                entropy=entropy,
                compiled=self.cfg.compile,
            )

    def _micro_batches(self, batch: Rows, unit: int = 1) -> list[torch.Tensor]:
        """Row indices of each micro-batch; a shared-prompt row counts as its pair's two sequences."""
        if not isinstance(batch, SharedPromptRows):
            return super()._micro_batches(batch, unit)
        c = self.cfg
        lengths = batch.attention_mask.sum(-1).tolist()
        pairs = max(1, c.per_device_samples_per_micro_batch // 2)
        plan = plan_micro_batches(lengths, pairs, c.max_tokens_per_micro_batch, unit=unit)
        return [torch.tensor(rows, device=self.device) for rows in plan]

    def _kto_kl(self, batch: list[UnpairedExample], previous: list[list[int]] | None = None) -> torch.Tensor:
        """KTO's reference point z0 (Ethayarajh et al. 2024, arXiv 2402.01306, section 4), estimated
        as in the authors' code and TRL: the mean policy-vs-reference log-ratio of mismatched pairs
        (each prompt with the previous example's completion, ``previous``; by default the batch's
        own), clamped at 0, without gradient. With several learners the mean is over all ranks."""
        if previous is None:
            previous = [batch[i - 1].completion_ids for i in range(len(batch))]
        mismatched = [
            UnpairedExample(e.prompt_ids, completion, e.desirable)
            for e, completion in zip(batch, previous, strict=True)
        ]
        rows = self._collate(mismatched)
        ratio = self._sequence_logps(rows) - self._sequence_logps(rows, reference=True)
        total = {"sum": ratio.sum().item(), "count": float(len(ratio))}
        total = total if self.dp is None else self.dp.sum(total)
        return torch.tensor(total["sum"] / total["count"], device=self.device).clamp(min=0)

    def _reward_metrics(
        self, logps: torch.Tensor, rewards: torch.Tensor, chosen: torch.Tensor
    ) -> dict[str, float]:
        """rewards/* and logps/* of the whole batch (per row: ``chosen`` says which side it is on)."""
        metrics = {
            "logps/chosen": logps[chosen].mean().item(),
            "logps/rejected": logps[~chosen].mean().item(),
        }
        if self.unpaired:  # no pairs: compare the means of desirable and undesirable rewards
            # A KTO batch may hold one label only: the other side's means are left out, not NaN.
            metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
            for side, rows in (("chosen", chosen), ("rejected", ~chosen)):
                if rows.any():
                    metrics[f"rewards/{side}"] = rewards[rows].mean().item()
            if chosen.any() and (~chosen).any():
                metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
            return metrics
        info = {"rewards/chosen": rewards[chosen], "rewards/rejected": rewards[~chosen]}
        return {**metrics, **preference_metrics(info)}


def _per_sequence(rows: Rows, per_token: torch.Tensor) -> torch.Tensor:
    """Sums of ``per_token`` [N, L] over each sequence's completion tokens, in sequence order."""
    if isinstance(rows, SharedPromptRows):
        return rows.per_sequence(per_token)
    return (per_token * rows.completion_mask).sum(-1)


def _sequence_index(rows: torch.Tensor, per_row: int) -> torch.Tensor:
    """Indices of the sequences held by ``rows`` (``per_row`` consecutive sequences per row)."""
    return (rows[:, None] * per_row + torch.arange(per_row, device=rows.device)).flatten()


def _check_custom_mask_support(model: torch.nn.Module) -> None:
    """learner.share_prompt passes its own [N, 1, L, L] attention mask, which only transformers'
    sdpa and eager attention take as given."""
    kind = base_model(model).config._attn_implementation
    if kind not in ("sdpa", "eager"):
        raise ValueError(
            f"learner.share_prompt needs sdpa or eager attention (it builds its own attention "
            f"mask); this model uses {kind!r}: set learner.share_prompt=false"
        )


def _check_sliding_window(model: torch.nn.Module, width: int) -> None:
    """The shared-prompt mask is not windowed: refuse rows longer than a sliding window."""
    config = base_model(model).config
    window = getattr(config, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or [])
    if window and sliding and width > window:
        raise ValueError(
            f"learner.share_prompt: a {width}-token row is longer than the model's sliding window "
            f"({window}), which its own attention mask does not apply: set learner.share_prompt=false"
        )
