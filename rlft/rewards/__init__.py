"""Reward functions: load user functions by path or module name and combine them with weights."""

from rlft.rewards.loader import RewardFunction, load_reward_function
from rlft.rewards.manager import RewardManager

__all__ = ["RewardFunction", "RewardManager", "load_reward_function"]
