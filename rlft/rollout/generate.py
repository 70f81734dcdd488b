"""Generating completions on several rollout workers, for training rollouts and evaluation.

Generation is load-balanced: the prompts are cut into chunks of ``rollout.prompts_per_chunk``
and each chunk goes to whichever rollout worker is free first (:meth:`Cluster.pull_map`); a
chunk's seed depends only on its position, so the completions do not depend on which worker
generated them, and they come back in prompt order.
"""

from __future__ import annotations

from typing import Any

from rlft.cluster import Cluster
from rlft.config import SamplingConfig
from rlft.rollout.engine import Completion


def chunk_size(num_prompts: int, num_workers: int, prompts_per_chunk: int) -> int:
    """``prompts_per_chunk``, or if 0 a quarter of each worker's share (everything with one worker)."""
    if prompts_per_chunk:
        return prompts_per_chunk
    if num_workers == 1:
        return max(num_prompts, 1)
    return max(1, -(-num_prompts // (4 * num_workers)))


def generate(
    cluster: Cluster,
    workers: list[Any],
    prompt_ids: list[list[int]],
    n: int,
    sampling: SamplingConfig,
    seed: int,
    prompts_per_chunk: int = 0,
) -> list[list[Completion]]:
    """``n`` completions of each prompt, in prompt order. Chunk i is generated with seed
    ``seed * 1000 + i`` by whichever worker is free first."""
    size = chunk_size(len(prompt_ids), len(workers), prompts_per_chunk)
    chunks = [(i, prompt_ids[lo : lo + size]) for i, lo in enumerate(range(0, len(prompt_ids), size))]
    results = cluster.pull_map(
        workers, lambda w, chunk: w.generate.remote(chunk[1], n, sampling, seed * 1_000 + chunk[0]), chunks
    )
    return [group for result in results for group in result]
