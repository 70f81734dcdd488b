"""Running users' agents against a rollout worker's endpoint: the agent contract.

An agent is ``run(client, row)``, loaded by path (``agent.path=my_agent.py:run``), plain or
``async def``. ``client`` is an ``openai.OpenAI`` (``openai.AsyncOpenAI`` for an ``async def``)
already pointed at the worker's :class:`~rlft.rollout.endpoint.Endpoint` with the episode's own
key; ``row`` is the dataset row (a dict of its columns). It makes any number of calls and returns
the episode's reward: a number, a dict of named numbers (weighted by ``agent.reward_weights``,
1.0 each by default, and summed; each also reported as ``reward/<name>/mean``) or None (no
opinion). ``agent.verifiers`` and ``agent.openenv`` are agents of the same form made from a hub
environment (:mod:`rlft.rollout.hub_envs`).

Episodes run concurrently, at most ``agent.max_concurrency`` at once, each within
``agent.timeout_s``. An agent that raises, returns something else or runs out of time fails its
episode, not the run: the episode's calls get ``agent.failure_reward`` (or are not trained on,
when it is None) and it is counted (``agent/errors``, ``agent/timeouts``). A sync agent past its
timeout cannot be stopped; its key is revoked, so its next call fails and it ends.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import reprlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.config import AgentConfig
from rlft.rewards.loader import load_object
from rlft.rollout.calls import Call, MergeStats, calls_to_episodes
from rlft.rollout.endpoint import Endpoint
from rlft.rollout.episode import Episode

AGENT_KEYS = ("path", "verifiers", "openenv")


@dataclass
class AgentEpisode:
    """One run of the agent on one row: its trajectories (see :mod:`rlft.rollout.calls`)."""

    episodes: list[Episode]
    reward: float
    named_rewards: dict[str, float] = field(default_factory=dict)
    outcome: str = "done"
    """``done`` | ``error`` (raised, or returned no reward) | ``timeout``."""
    error: str | None = None
    merge: MergeStats = field(default_factory=MergeStats)
    calls: list[Call] = field(default_factory=list)
    """The recorded calls the episodes were made of, in order."""


def agent_spec(cfg: AgentConfig) -> tuple[str, str] | None:
    """``(kind, spec)`` of the configured agent (kind: path | verifiers | openenv), or None when
    no agent is configured; more than one is a ValueError."""
    chosen = [(key, getattr(cfg, key)) for key in AGENT_KEYS if getattr(cfg, key)]
    if len(chosen) > 1:
        raise ValueError(
            f"agent.{chosen[0][0]} and agent.{chosen[1][0]} are both set; set only one of "
            + ", ".join(f"agent.{k}" for k in AGENT_KEYS)
        )
    return chosen[0] if chosen else None


def load_agent(cfg: AgentConfig, search_dirs: Sequence[Path] = ()) -> Callable[..., Any]:
    """The configured agent as ``run(client, row)``; errors name the spec and the fix."""
    kind, spec = agent_spec(cfg) or (None, None)
    if kind is None:
        raise ValueError("no agent configured: set agent.path, agent.verifiers or agent.openenv")
    if kind == "verifiers":
        from rlft.rollout.hub_envs import verifiers_agent

        return verifiers_agent(load_object(spec, "verifiers environment", search_dirs=search_dirs)[0], spec)
    if kind == "openenv":
        from rlft.rollout.hub_envs import openenv_agent

        factory = load_object(spec, "openenv environment", search_dirs=search_dirs)[0]
        return openenv_agent(factory, spec, cfg.max_turns)
    fn = load_object(spec, "agent", search_dirs=search_dirs)[0]
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError as err:
        raise TypeError(
            f"agent spec {spec!r}: {getattr(fn, '__name__', spec)}{inspect.signature(fn)} cannot be "
            "called as run(client, row); write it as `def run(client, row) -> float | dict | None` "
            "(or `async def`)"
        ) from err
    except ValueError:  # no signature to read (a builtin): let the call tell
        pass
    return fn


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` (a function or a callable object) is ``async def``."""
    call = fn.__call__ if not inspect.isfunction(fn) else None  # a callable object's method
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def run_agents(
    endpoint: Endpoint, agent: Callable[..., Any], rows: list[dict[str, Any]], cfg: AgentConfig
) -> list[AgentEpisode]:
    """One episode of ``agent`` per row (in row order), against ``endpoint`` (already serving)."""
    return asyncio.run(_run_all(endpoint, agent, rows, cfg))


async def _run_all(
    endpoint: Endpoint, agent: Callable[..., Any], rows: list[dict[str, Any]], cfg: AgentConfig
) -> list[AgentEpisode]:
    import openai

    for name in ("httpx", "httpx2"):  # one INFO line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    limit = asyncio.Semaphore(cfg.max_concurrency)
    threads = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix="rlft-agent")
    loop = asyncio.get_running_loop()
    asynchronous = is_async(agent)

    async def episode(row: dict[str, Any]) -> AgentEpisode:
        async with limit:
            key = endpoint.open_episode()
            client_class = openai.AsyncOpenAI if asynchronous else openai.OpenAI
            client = client_class(
                base_url=endpoint.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s
            )
            outcome, value, error = "done", None, None
            try:
                work = (
                    agent(client, dict(row))
                    if asynchronous
                    else loop.run_in_executor(threads, agent, client, dict(row))
                )
                value = await asyncio.wait_for(work, cfg.timeout_s)
            except TimeoutError:
                outcome, error = "timeout", f"the agent ran past agent.timeout_s={cfg.timeout_s}"
            except Exception as err:  # the agent's own failure ends its episode only
                outcome, error = "error", f"{type(err).__name__}: {err}"
            calls = endpoint.close_episode(key)
            if asynchronous:
                await client.close()
            if outcome == "done":
                reward, named, error = episode_reward(value, cfg.reward_weights)
                outcome = "done" if error is None else "error"
            if outcome != "done":
                if cfg.failure_reward is None:
                    return AgentEpisode([], math.nan, {}, outcome, error, MergeStats(calls=len(calls)), calls)
                reward, named = cfg.failure_reward, {}
            episodes, merge = calls_to_episodes(calls, reward)
            for e in episodes:
                e.finish_reason, e.error = ("done", None) if outcome == "done" else (outcome, error)
            return AgentEpisode(episodes, reward, named, outcome, error, merge, calls)

    try:
        return list(await asyncio.gather(*(episode(row) for row in rows)))
    finally:
        threads.shutdown(wait=False, cancel_futures=True)


def episode_reward(value: Any, weights: dict[str, float]) -> tuple[float, dict[str, float], str | None]:
    """(reward, named rewards, error) of what an agent returned: a number, a dict of named numbers
    (weighted sum) or None (NaN: no opinion)."""
    if value is None:
        return math.nan, {}, None
    if _is_number(value):
        return float(value), {}, None
    named_numbers = (
        all(isinstance(k, str) and _is_number(v) for k, v in value.items())
        if isinstance(value, dict)
        else False
    )
    if value and named_numbers:
        named = {k: float(v) for k, v in value.items()}
        return sum(weights.get(k, 1.0) * v for k, v in named.items()), named, None
    return (
        math.nan,
        {},
        (f"the agent returned {reprlib.repr(value)}, not a finite number, a dict of named numbers or None"),
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
