"""Evaluation on held-out prompts: mean@k and pass@k.

Every evaluation prompt (the ``eval`` split of the data config, see
:func:`rlft.data.prompts.load_prompt_rows`) gets ``eval.k`` completions from the rollout workers,
sampled with ``eval.sampling`` and the fixed seed ``eval.seed`` (so evaluations at different
steps differ only by the weights), scored by ``eval.reward_functions`` (default: the training
ones). A completion is correct when its reward is at least ``eval.pass_threshold``. During
training this runs every ``eval.every_steps`` steps with the workers' current weights; ``rlft eval
<checkpoint or model dir>`` runs it once (:func:`evaluate_model`).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rlft.cluster import Cluster
from rlft.config import RLFTConfig
from rlft.data.prompts import load_prompt_rows, tokenize_prompts
from rlft.rewards import RewardManager
from rlft.rollout.generate import generate
from rlft.rollout.worker import spawn_rollout_workers


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of one problem, ``c`` of them correct.

    Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (arXiv 2107.03374), eq. 1:
    pass@k = 1 - C(n - c, k) / C(n, k), the probability that at least one of k samples drawn
    without replacement from the n is correct. Computed as the product
    1 - prod_{i = n - c + 1}^{n} (1 - k / i), which avoids huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_ks(k: int) -> list[int]:
    """The j of the reported pass@j: powers of two below ``k``, and ``k``."""
    return sorted({2**i for i in range(k.bit_length()) if 2**i < k} | {k})


def eval_metrics(rewards: torch.Tensor, threshold: float) -> dict[str, float]:
    """``eval/mean@k`` (mean reward over every prompt's k samples; NaN = no opinion, left out) and
    ``eval/pass@j`` (mean over prompts of :func:`pass_at_k`; a sample is correct when its reward is
    >= ``threshold``, NaN is not) for ``rewards`` of shape [prompts, k]."""
    k = rewards.shape[1]
    correct = (rewards >= threshold).sum(dim=1).tolist()  # NaN >= t is False
    metrics = {f"eval/mean@{k}": rewards.nanmean().item()}
    for j in pass_ks(k):
        metrics[f"eval/pass@{j}"] = sum(pass_at_k(k, c, j) for c in correct) / len(correct)
    return metrics


class Evaluator:
    """The evaluation prompts, tokenized, and their reward functions, loaded once (bad input fails
    here, before any actor starts)."""

    def __init__(self, cfg: RLFTConfig, tokenizer: Any, search_dirs: list[Path] | None = None):
        self.cfg = cfg
        data = load_prompt_rows(cfg.data, "eval", tokenizer, cfg.model.max_prompt_tokens)
        if not data.rows:
            raise ValueError("the evaluation split has no rows (see data.eval_* in rlft/config.py)")
        self.rows = data.rows
        own = bool(cfg.eval.reward_functions)
        self.rewards = RewardManager.from_config(
            cfg.reward,
            search_dirs or [],
            functions=cfg.eval.reward_functions if own else None,
            weights=cfg.eval.reward_weights if own else None,
        )
        self.rewards.check_columns(c for c in data.columns if c != cfg.data.prompt_column)
        self.prompts = [row[cfg.data.prompt_column] for row in self.rows]
        self.prompt_ids = tokenize_prompts(tokenizer, self.prompts, cfg.data, cfg.model.max_prompt_tokens)

    def due(self, step: int) -> bool:
        """Whether to evaluate after training step ``step`` (every ``eval.every_steps`` and the last)."""
        every = self.cfg.eval.every_steps
        return every > 0 and (step % every == 0 or step == self.cfg.trainer.max_steps)

    def evaluate(self, cluster: Cluster, workers: list[Any]) -> dict[str, float]:
        """Generate, score and summarise; metrics named ``eval/...``."""
        ec, k = self.cfg.eval, self.cfg.eval.k
        start = time.perf_counter()
        groups = generate(
            cluster, workers, self.prompt_ids, k, ec.sampling, ec.seed, self.cfg.rollout.prompts_per_chunk
        )
        completions = [c for group in groups for c in group]
        columns = {
            key: [row[key] for row in self.rows for _ in range(k)]
            for key in self.rows[0]
            if key != self.cfg.data.prompt_column
        }
        prompts = [p for p in self.prompts for _ in range(k)]
        scores, fn_metrics = self.rewards.score(prompts, [c.text for c in completions], columns)
        rewards = torch.tensor(scores, dtype=torch.float32).view(len(self.prompts), k)
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        return {
            **eval_metrics(rewards, ec.pass_threshold),
            **{f"eval/{name}": value for name, value in fn_metrics.items()},
            "eval/response_len/mean": lengths.mean().item(),
            "eval/num_prompts": float(len(self.prompts)),
            "eval/policy_version": float(min(c.policy_version for c in completions)),
            "timing/eval_s": time.perf_counter() - start,
        }


def evaluate_model(cfg: RLFTConfig, search_dirs: list[Path] | None = None) -> dict[str, float]:
    """Evaluate the model at ``cfg.model`` once, on ``rollout.num_workers`` rollout workers."""
    from rlft.modeling import load_tokenizer

    evaluator = Evaluator(cfg, load_tokenizer(cfg.model), search_dirs)
    with Cluster(cfg.cluster) as cluster:
        return evaluator.evaluate(cluster, spawn_rollout_workers(cluster, cfg.model, cfg.rollout))


def evaluate_checkpoint(
    ckpt: Path, cfg: RLFTConfig, search_dirs: list[Path] | None = None
) -> dict[str, float]:
    """Evaluate an rlft checkpoint: its policy is first written out as a plain model (LoRA
    adapters merged, :func:`rlft.export.export_checkpoint`) into a temporary directory."""
    from rlft.export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="rlft-eval-") as tmp:
        model_dir = export_checkpoint(ckpt, Path(tmp) / "model")
        cfg.model.path, cfg.model.tokenizer_path, cfg.model.lora.rank = str(model_dir), None, 0
        return evaluate_model(cfg, search_dirs)
