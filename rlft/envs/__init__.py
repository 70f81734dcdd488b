"""Multi-turn environments: the contract, and loading one by path.

An environment is a plain class, referenced as ``env.path=path/to/file.py:Class`` (or
``module.sub:Class``; ``tools`` = the built-in :class:`rlft.envs.tools.ToolEnv`). One instance is
created per episode, with ``env.params`` as keyword arguments::

    class GuessEnv:
        def reset(self, row: dict) -> list[dict]:
            # the dataset row -> the opening messages ({"role": ..., "content": ...})
        def step(self, message: dict) -> Step | tuple[list[dict], float | None, bool]:
            # the model's assistant message -> new messages (user / tool), a per-turn reward
            # (None = none) and whether the episode is over
        def final_reward(self) -> float | None:      # optional: called once the episode ended
        tools: list[Callable]                        # optional: typed, documented functions whose
                                                     # JSON schemas the chat template gets (tools=)

The episode's reward is the sum of its per-turn rewards plus the final reward (NaN = no opinion
when there is neither), plus the weighted reward functions (``reward.functions``) scored on the
last assistant message. An environment that raises, returns the wrong types or takes longer than
``env.step_timeout_s`` ends that episode with ``env.failure_reward`` (counted in ``env/errors`` and
``env/timeouts``), never the run. ``Step.metrics`` are summed over an episode and averaged over
episodes in ``env/<name>``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.rewards.loader import load_object


@dataclass
class Step:
    """What an environment's ``step`` returns (a ``(messages, reward, done)`` tuple works too)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    """New messages for the model (user, tool, ...); empty is fine when ``done``."""
    reward: float | None = None
    """This turn's reward; None = none."""
    done: bool = False
    """The episode is over (no further model turn)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Counts to sum over the episode (e.g. ``tool_calls``), logged as ``env/<name>`` means."""


class EnvError(RuntimeError):
    """An environment broke its contract (raised, returned the wrong types, took too long)."""


def check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    """``messages`` if it is a list of ``{"role": str, "content": str, ...}`` dicts, else an EnvError."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise EnvError(
            f"{where} must return a list of messages, dicts with a str 'role' and a str 'content'; "
            f"got {messages!r:.200}"
        )
    return messages


def as_step(result: Any) -> Step:
    """An environment's ``step`` result as a :class:`Step`, or an EnvError saying what is wrong."""
    if isinstance(result, tuple) and len(result) == 3:
        result = Step(*result)
    if not isinstance(result, Step):
        raise EnvError(
            "step() must return rlft.envs.Step(messages, reward, done) or a (messages, reward, done) "
            f"tuple; got {type(result).__name__}: {result!r:.200}"
        )
    check_messages(result.messages, "step()")
    if result.reward is not None and not _is_number(result.reward):
        raise EnvError(f"step() returned reward {result.reward!r}: a number or None")
    if not isinstance(result.done, bool):
        raise EnvError(f"step() returned done={result.done!r}: a bool")
    if not result.done and not result.messages:
        raise EnvError("step() returned no messages and done=False: the model would have nothing to answer")
    return result


def check_reward(value: Any, where: str) -> float | None:
    if value is not None and not _is_number(value):
        raise EnvError(f"{where} returned {value!r}: a number or None")
    return None if value is None else float(value)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and not math.isnan(float(x))


BUILTIN_ENVS = ("tools",)
"""``env.path`` values that name a built-in environment."""


def load_env_class(spec: str, search_dirs: Sequence[Path] = ()) -> Callable[..., Any]:
    """The environment class named by ``spec`` (``path/file.py:Class``, ``module:Class`` or
    ``tools``), checked for ``reset`` and ``step``; errors name the spec and the fix."""
    if spec == "tools":
        from rlft.envs.tools import ToolEnv

        return ToolEnv
    cls, _ = load_object(spec, "environment", search_dirs=search_dirs)
    missing = [name for name in ("reset", "step") if not callable(getattr(cls, name, None))]
    if missing:
        raise TypeError(
            f"environment spec {spec!r}: {getattr(cls, '__name__', cls)!r} has no {' or '.join(missing)} "
            "method; an environment is a class with reset(row) -> messages and step(message) -> Step"
        )
    return cls
