"""Checks both trainers run before any actor starts: bad input is a :class:`SetupError` (``rlft``
exits with code 2), and a run whose actors would reserve more CPUs or GPUs than Ray has fails
instead of waiting forever (:func:`check_resources` over :func:`resource_demand`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlft.config import RLFTConfig


class SetupError(RuntimeError):
    """Bad input found before any worker started: a path, a column, a reward function."""


def resource_demand(cfg: RLFTConfig) -> dict[str, tuple[float, float]]:
    """What the run's actors reserve on Ray: (CPUs, GPUs) for each part, keyed by the config keys
    that set them. With ``cluster.colocate`` the placement group holds the learners and rollout
    workers (their CPUs summed, the learners' GPUs); the reward-model actor is outside it. A
    preference run (``algorithm.kind=preference``) starts the learners only."""
    lc, rc, rm = cfg.learner, cfg.rollout, cfg.reward.model
    learners = (lc.num_workers * lc.num_cpus_per_worker, lc.num_workers * lc.num_gpus_per_worker)
    if cfg.algorithm.kind == "preference":
        return {"learners (learner.num_cpus_per_worker, learner.num_gpus_per_worker)": learners}
    if cfg.cluster.colocate:
        demand = {
            "the placement group of cluster.colocate=true (learner.num_cpus_per_worker + "
            "rollout.num_cpus_per_worker, learner.num_gpus_per_worker, per learner)": (
                lc.num_workers * (lc.num_cpus_per_worker + rc.num_cpus_per_worker),
                lc.num_workers * lc.num_gpus_per_worker,
            )
        }
    else:
        demand = {
            "learners (learner.num_cpus_per_worker, learner.num_gpus_per_worker)": learners,
            "rollout workers (rollout.num_cpus_per_worker, rollout.num_gpus_per_worker)": (
                rc.num_workers * rc.num_cpus_per_worker,
                rc.num_workers * rc.num_gpus_per_worker,
            ),
        }
    if rm.path is not None:
        demand["the reward model (reward.model.num_cpus, reward.model.num_gpus)"] = (rm.num_cpus, rm.num_gpus)
    return demand


def check_resources(demand: dict[str, tuple[float, float]], total: dict[str, float]) -> None:
    """Raise a SetupError, before any actor starts, if ``demand`` (:func:`resource_demand`) needs
    more CPUs or GPUs than the Ray instance has in ``total``: Ray would wait for them forever."""
    for index, resource in enumerate(("CPU", "GPU")):
        parts = {name: amounts[index] for name, amounts in demand.items() if amounts[index] > 0}
        need, have = sum(parts.values()), total.get(resource, 0.0)
        if need > have + 1e-9:
            listed = "; ".join(f"{amount:g} for {name}" for name, amount in parts.items())
            # Ray's CPU count is a number to reserve from, not the cores: it may exceed them.
            more = f" or raise cluster.num_cpus to {need:g}" if resource == "CPU" else ""
            raise SetupError(
                f"the actors reserve {need:g} {resource}s but Ray has {have:g}, so it would wait for "
                f"them forever: {listed}. Lower those keys (fractions such as 0.5 are fine){more}"
            )
