"""The learner ranks as one object for the trainers: ``learner.num_workers`` learner actors that
train data-parallel (:mod:`rlft.learner.distributed`).

:class:`LearnerGroup` offers what the trainer loops use from a learner. ``train_step`` and
``preference_step`` split the batch across the ranks (:func:`split_by_tokens`) and return the
metrics of the whole batch (every rank reduces them the same way; rank 0's copy is returned);
``save_checkpoint`` / ``load_checkpoint`` run on every rank (rank 0 writes). Any other method
(the weight-sync endpoints, ``get_weights``, ``completion_logprobs``, ``reference_logps``) goes to
rank 0's handle: every rank holds the whole, identical model. With one rank this is just that
learner.
"""

from __future__ import annotations

from typing import Any

from rlft.learner.batch import Sample
from rlft.learner.distributed import Shard


def split_by_tokens(lengths: list[int], world_size: int, mini_batch_size: int) -> list[Shard]:
    """Which rows each of ``world_size`` ranks trains on.

    The batch (``lengths[i]`` = tokens of row i) is cut, in order, into optimizer-step mini-batches
    of ``mini_batch_size`` rows (the last may be smaller); each mini-batch is dealt to the ranks
    greedily, longest row first to the rank with the fewest tokens so far, so that each rank's
    share of a mini-batch holds about the same number of tokens. Every rank gets at least one row
    of every mini-batch; a rank keeps its rows in batch order.
    """
    total = len(lengths)
    indices: list[list[int]] = [[] for _ in range(world_size)]
    sizes: list[list[int]] = [[] for _ in range(world_size)]
    for lo in range(0, total, mini_batch_size):
        rows = list(range(lo, min(lo + mini_batch_size, total)))
        if len(rows) < world_size:
            raise ValueError(
                f"an optimizer step has {len(rows)} samples, fewer than learner.num_workers="
                f"{world_size}: raise learner.global_samples_per_optimizer_step (or the samples "
                "per step) to at least learner.num_workers, or use fewer learners"
            )
        tokens = [0] * world_size
        share: list[list[int]] = [[] for _ in range(world_size)]
        for row in sorted(rows, key=lambda i: -lengths[i]):
            rank = min(range(world_size), key=lambda r: (len(share[r]) > 0, tokens[r], r))
            share[rank].append(row)
            tokens[rank] += lengths[row]
        for rank in range(world_size):
            indices[rank] += sorted(share[rank])
            sizes[rank].append(len(share[rank]))
    return [Shard(indices[r], sizes[r], total) for r in range(world_size)]


def _example_tokens(example: Any) -> int:
    """Tokens a preference example puts through the model: both rows of a pair."""
    if hasattr(example, "chosen_ids"):
        return 2 * len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)
    return len(example.prompt_ids) + len(example.completion_ids)


WHOLE_MODEL_CALLS = ("get_weights", "completion_logprobs", "reference_logps", "token_stats")
"""Learner methods that every rank of a sharded (FSDP2) group must run together."""


class _OnEveryRank:
    """``.remote(*args)`` calls the method on every rank and returns rank 0's result (reference)."""

    def __init__(self, ranks: list[Any], name: str):
        self.ranks, self.name = ranks, name

    def remote(self, *args: Any) -> Any:
        refs = [getattr(r, self.name).remote(*args) for r in self.ranks]  # all start together
        return refs[0]


class LearnerGroup:
    """``num_workers`` learners of class ``cls`` (built with ``args``), joined into one process
    group when there are several. ``cluster`` is an ``rlft.cluster.Cluster``."""

    def __init__(
        self,
        cluster: Any,
        cls: type,
        *args: Any,
        num_workers: int = 1,
        num_cpus: float = 1,
        num_gpus: float = 0,
        samples_per_optimizer_step: int = 0,
        sharded: bool = False,
    ):
        """``samples_per_optimizer_step``: ``learner.global_samples_per_optimizer_step`` (0 = the
        whole batch), how the batch is cut into optimizer steps before it is split over the ranks.
        ``sharded``: the learners shard the model (``learner.strategy=fsdp2``), so every rank takes
        part in the calls that need the whole model (:data:`WHOLE_MODEL_CALLS`)."""
        if num_workers < 1:
            raise ValueError(f"learner.num_workers must be >= 1, got {num_workers}")
        if num_workers > 1 and cluster.local:
            raise ValueError("learner.num_workers > 1 needs one process per learner: use cluster.mode=ray")
        self.cluster = cluster
        self.samples_per_optimizer_step = samples_per_optimizer_step
        self.sharded = sharded and num_workers > 1
        self.ranks = [
            cluster.spawn(cls, *args, num_cpus=num_cpus, num_gpus=num_gpus) for _ in range(num_workers)
        ]
        if num_workers > 1:
            spec = cluster.get(self.ranks[0].open_data_parallel.remote(num_workers))
            self._all(lambda rank, r: r.join_data_parallel.remote(spec, rank))

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def __getattr__(self, name: str) -> Any:
        """Everything else is rank 0's: ``group.get_weights.remote()`` etc. With a sharded model
        the calls that need all of it run on every rank (rank 0's result is returned)."""
        if name.startswith("_") or name in ("ranks", "cluster", "sharded"):
            raise AttributeError(name)
        if self.sharded and name in WHOLE_MODEL_CALLS:
            return _OnEveryRank(self.ranks, name)
        return getattr(self.ranks[0], name)

    def train_step(self, samples: list[Sample]) -> dict[str, float]:
        """One RL step's update on all ranks; the metrics of the whole batch."""
        if self.world_size == 1:
            return self.cluster.get(self.ranks[0].train_step.remote(samples))
        lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in samples]
        shards = split_by_tokens(lengths, self.world_size, self.samples_per_optimizer_step or len(samples))
        return self._all(
            lambda rank, r: r.train_step.remote([samples[i] for i in shards[rank].indices], shards[rank])
        )[0]

    def preference_step(self, batch: list[Any], ref_logps: list[tuple[float, ...]] | None) -> Any:
        """One preference optimizer step on all ranks (examples split by tokens); returns the
        metrics of the whole batch and every example's implicit rewards, in batch order."""
        if self.world_size == 1:
            return self.cluster.get(self.ranks[0].preference_step.remote(batch, ref_logps))
        shards = split_by_tokens([_example_tokens(e) for e in batch], self.world_size, len(batch))
        unpaired = not hasattr(batch[0], "chosen_ids")  # KTO: each example meets the one before it
        results = self._all(
            lambda rank, r: r.preference_step.remote(
                [batch[i] for i in shards[rank].indices],
                None if ref_logps is None else [ref_logps[i] for i in shards[rank].indices],
                shards[rank],
                [batch[i - 1].completion_ids for i in shards[rank].indices] if unpaired else None,
            )
        )
        rewards: list[Any] = [None] * len(batch)
        for shard, (_, part) in zip(shards, results, strict=True):
            for i, r in zip(shard.indices, part, strict=True):
                rewards[i] = r
        return results[0][0], rewards

    def save_checkpoint(self, path: str) -> None:
        """Every rank takes part; rank 0 writes into ``path``."""
        self._all(lambda rank, r: r.save_checkpoint.remote(path))

    def load_checkpoint(self, path: str) -> None:
        """Every rank restores ``path``."""
        self._all(lambda rank, r: r.load_checkpoint.remote(path))

    def _all(self, call: Any) -> list[Any]:
        """``call(rank, handle)`` on every rank at once; the results in rank order. The first
        rank to fail raises at once (the others may be blocked in a collective waiting for it)."""
        refs = [call(rank, r) for rank, r in enumerate(self.ranks)]
        if self.cluster.local:
            return refs
        import ray

        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        return ray.get(refs)
