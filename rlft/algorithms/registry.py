"""The algorithm registries: configs pick advantage estimators, policy losses, aggregations, KL
estimators and preference losses by name (``algorithm.advantage=grpo``) or by path to a user's
function (``algorithm.policy_loss=my_loss.py:fn``); see :mod:`rlft.registry`.

The traits below are what validation and the learner ask a registry about an entry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rlft.registry import NoTraits, Registry, absolute_spec

if TYPE_CHECKING:
    from rlft.config import AlgorithmConfig


@dataclass(frozen=True)
class AdvantageTraits:
    """What an advantage estimator needs from the rest of the run."""

    needs_critic: bool = False
    """It reads critic values (`AdvantageInput.values`): the learner loads and trains a critic."""
    min_group_size: int = 1
    """Smallest `algorithm.group_size` it works with (2 for baselines from the rest of the group)."""
    takes_token_rewards: bool = True
    """It accepts per-token rewards (`algorithm.kl.in_reward=true`); False: KL only as a loss term."""
    needs_teacher: bool = False
    """It reads a frozen teacher's log-probs (`AdvantageInput.teacher_logprobs`): `teacher.path`
    must be set, and a reward function is optional."""


@dataclass(frozen=True)
class PreferenceTraits:
    """What a preference loss trains on and needs."""

    reference_free: bool = False
    """No reference model: the trainer loads none and passes no reference log-probs."""
    unpaired: bool = False
    """Trained on unpaired desirable/undesirable examples (`KTOInput`), not chosen/rejected pairs."""


ADVANTAGE_ESTIMATORS: Registry[AdvantageTraits] = Registry(
    "algorithm.advantage", AdvantageTraits, arguments=("data", "cfg")
)
POLICY_LOSSES: Registry[NoTraits] = Registry(
    "algorithm.policy_loss", arguments=("logprobs", "old_logprobs", "advantages", "mask", "cfg")
)
LOSS_AGGREGATIONS: Registry[NoTraits] = Registry(
    "algorithm.loss_agg", arguments=("per_token", "mask"), keywords=("num_tokens", "num_seqs", "horizon")
)
KL_ESTIMATORS: Registry[NoTraits] = Registry("algorithm.kl.estimator", arguments=("logprobs", "ref_logprobs"))
PREFERENCE_LOSSES: Registry[PreferenceTraits] = Registry(
    "algorithm.preference_loss", PreferenceTraits, arguments=("data", "cfg")
)

register_advantage, get_advantage = ADVANTAGE_ESTIMATORS.register, ADVANTAGE_ESTIMATORS.lookup
register_policy_loss, get_policy_loss = POLICY_LOSSES.register, POLICY_LOSSES.lookup
register_loss_agg, get_loss_agg = LOSS_AGGREGATIONS.register, LOSS_AGGREGATIONS.lookup
register_kl, get_kl = KL_ESTIMATORS.register, KL_ESTIMATORS.lookup
register_preference_loss, get_preference_loss = PREFERENCE_LOSSES.register, PREFERENCE_LOSSES.lookup


def with_absolute_paths(cfg: AlgorithmConfig) -> AlgorithmConfig:
    """``cfg`` with every function given by a relative file path (``my_loss.py:fn``) made absolute,
    so that learners in other processes (or a resumed run elsewhere) load the same file."""
    keys = {
        "advantage": ADVANTAGE_ESTIMATORS,
        "policy_loss": POLICY_LOSSES,
        "loss_agg": LOSS_AGGREGATIONS,
        "preference_loss": PREFERENCE_LOSSES,
    }
    changes = {key: absolute_spec(getattr(cfg, key), registry.config_key) for key, registry in keys.items()}
    kl = replace(cfg.kl, estimator=absolute_spec(cfg.kl.estimator, KL_ESTIMATORS.config_key))
    return replace(cfg, **changes, kl=kl)
