"""PreferenceLearner: the :class:`Learner` with an offline preference update (DPO family, KTO).

Sequences are scored by the sum of their completion tokens' log-probabilities at temperature 1;
the loss is a pure function from ``rlft.algorithms.preference_losses``, picked by
``algorithm.preference_loss``. Checkpoints, weights and the optimizer are the base class's.
"""

from __future__ import annotations

import math
import time

import torch

from rlft.algorithms.preference_losses import (
    REFERENCE_FREE_PREFERENCE_LOSSES,
    UNPAIRED_PREFERENCE_LOSSES,
    KTOInput,
    PreferenceInput,
    preference_metrics,
)
from rlft.algorithms.registry import get_preference_loss
from rlft.config import AlgorithmConfig, LearnerConfig, ModelConfig, SamplingConfig
from rlft.data.preference import Example, UnpairedExample
from rlft.learner.batch import Batch, Sample, collate
from rlft.learner.distributed import Shard
from rlft.learner.learner import Learner

Logps = list[tuple[float, ...]]
"""Per example: (chosen, rejected) summed log-probs of a pair, (completion,) of an unpaired example."""


class PreferenceLearner(Learner):
    """One optimizer step per :meth:`preference_step`; ``policy_version`` counts them.

    A pair is two rows of one forward pass (chosen, then rejected), so a micro-batch holds
    ``learner.per_device_samples_per_micro_batch`` rows rounded down to whole pairs (at least one),
    or whole pairs up to ``learner.max_tokens_per_micro_batch`` tokens. With LoRA the reference
    is the policy with its adapters disabled.
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
        self.unpaired = algorithm_cfg.preference_loss in UNPAIRED_PREFERENCE_LOSSES

    def needs_reference(self) -> bool:
        return self.algo.preference_loss not in REFERENCE_FREE_PREFERENCE_LOSSES

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
        per_example = len(rows) // len(batch)
        # Which rows are chosen: every other one for pairs, the desirable ones for KTO.
        chosen = (
            torch.tensor([e.desirable for e in batch], device=self.device)
            if self.unpaired
            else torch.arange(len(rows), device=self.device) % 2 == 0
        )
        kl = self._kto_kl(batch, previous) if self.unpaired else None

        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"loss": 0.0}
        logps = torch.zeros(len(rows), device=self.device)
        rewards = torch.zeros(len(rows), device=self.device)
        plan = self._micro_batches(rows, unit=per_example)
        for part in plan:
            mb_ref = None if ref is None else ref[part]
            losses, mb_logps, mb_rewards = self._losses(rows.select(part), mb_ref, chosen[part], kl)
            loss = losses.sum() / total  # the batch mean, accumulated over micro-batches (and ranks)
            loss.backward()
            metrics["loss"] += loss.item()
            logps[part], rewards[part] = mb_logps.detach().float(), mb_rewards.detach().float()

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
        self, mb: Batch, ref: torch.Tensor | None, chosen: torch.Tensor, kl: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example losses of a micro-batch, and the per-row policy log-probs and rewards
        (``chosen``: the rows' desirable labels for KTO)."""
        logps = (self._logprobs_of(self.model)(mb) * mb.completion_mask).sum(-1)
        if self.unpaired:
            losses, info = self.loss_fn(KTOInput(logps, ref, chosen, kl), self.algo)
            return losses, logps, info["rewards"]
        lengths = mb.completion_mask.sum(-1)
        data = PreferenceInput(logps[0::2], logps[1::2], lengths[0::2], lengths[1::2])
        if ref is not None:
            data.ref_chosen_logps, data.ref_rejected_logps = ref[0::2], ref[1::2]
        losses, info = self.loss_fn(data, self.algo)
        rewards = torch.stack([info["rewards/chosen"], info["rewards/rejected"]], -1).flatten()
        return losses, logps, rewards

    def _collate(self, batch: list[Example]) -> Batch:
        """One row per completion: chosen, rejected, chosen, ... for pairs. Only the token columns
        of :func:`collate`'s batch are used (its RL fields are left at zero)."""
        if self.unpaired:
            seqs = [(e.prompt_ids, e.completion_ids) for e in batch]
        else:
            seqs = [(e.prompt_ids, c) for e in batch for c in (e.chosen_ids, e.rejected_ids)]
        samples = [Sample(p, c, [0.0] * len(c), 0.0, 0, self.policy_version) for p, c in seqs]
        return collate(samples, self.pad_token_id).to(self.device)

    def _sequence_logps(self, rows: Batch, reference: bool = False) -> torch.Tensor:
        """[N] summed completion log-probs of each row under the policy or the ``reference``,
        without gradient."""
        if reference:
            logprobs = self._reference_logprobs(rows)
        else:
            logprobs = self._no_grad_forward(self._logprobs_of(self.model), rows)
        return (logprobs * rows.completion_mask).sum(-1)

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
