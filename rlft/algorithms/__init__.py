"""Pure-torch RL algorithms (no Ray, no I/O), selected by name through the registries."""

from rlft.algorithms.advantages import grpo_advantages
from rlft.algorithms.kl import kl_k1, kl_k2, kl_k3
from rlft.algorithms.policy_losses import ppo_clip_loss, seq_mean_token_mean, token_mean
from rlft.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    Registry,
    get_advantage,
    get_kl,
    get_loss_agg,
    get_policy_loss,
    register_advantage,
    register_kl,
    register_loss_agg,
    register_policy_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "Registry",
    "get_advantage",
    "get_kl",
    "get_loss_agg",
    "get_policy_loss",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "ppo_clip_loss",
    "register_advantage",
    "register_kl",
    "register_loss_agg",
    "register_policy_loss",
    "seq_mean_token_mean",
    "token_mean",
]
