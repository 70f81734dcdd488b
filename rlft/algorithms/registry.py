"""Name -> function registries, so configs pick algorithms by name (`algorithm.advantage=grpo`)."""

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict[str, Callable]):
    """A dict of named functions with a decorator to add one and a getter with a helpful error."""

    def __init__(self, config_key: str) -> None:
        super().__init__()
        self.config_key = config_key

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.config_key} {name!r} is already registered")
            self[name] = fn
            return fn

        return decorator

    def lookup(self, name: str) -> Callable:
        if name not in self:
            raise ValueError(f"unknown {self.config_key} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]


ADVANTAGE_ESTIMATORS = Registry("algorithm.advantage")
POLICY_LOSSES = Registry("algorithm.policy_loss")
LOSS_AGGREGATIONS = Registry("algorithm.loss_agg")
KL_ESTIMATORS = Registry("algorithm.kl.estimator")

register_advantage, get_advantage = ADVANTAGE_ESTIMATORS.register, ADVANTAGE_ESTIMATORS.lookup
register_policy_loss, get_policy_loss = POLICY_LOSSES.register, POLICY_LOSSES.lookup
register_loss_agg, get_loss_agg = LOSS_AGGREGATIONS.register, LOSS_AGGREGATIONS.lookup
register_kl, get_kl = KL_ESTIMATORS.register, KL_ESTIMATORS.lookup

PREFERENCE_LOSSES = Registry("algorithm.preference_loss")
register_preference_loss, get_preference_loss = PREFERENCE_LOSSES.register, PREFERENCE_LOSSES.lookup
