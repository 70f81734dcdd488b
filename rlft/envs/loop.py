"""The environment loop: many episodes in flight on one rollout worker's engine.

Each turn, the model's next message of every live episode is generated in one engine call (the
episode's whole token sequence is the prompt), then every environment steps at once in its own
thread, each bounded by ``env.step_timeout_s``. Token sequences are built append-only
(:mod:`rlft.envs.render`): the model's tokens as sampled (loss mask 1, the sampler's log-probs),
the template's tokens between turns (loss mask 0).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlft.config import EnvConfig, SamplingConfig
from rlft.envs import EnvError, as_step, check_messages, check_reward, load_env_class
from rlft.envs.render import ChatRenderer, TemplateError
from rlft.rollout.engine import Completion
from rlft.rollout.episode import Episode

Generate = Callable[[list[list[int]], SamplingConfig, int], list[Completion]]
"""One completion of each prompt (token ids) with these sampling settings and seed."""


@dataclass
class _Live:
    """An episode being played."""

    env: Any
    row: dict[str, Any]
    renderer: ChatRenderer | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    num_turns: int = 0
    finish: str | None = None
    error: str | None = None

    def length(self) -> int:
        return len(self.prompt_ids) + len(self.ids)

    def end(self, reason: str, error: str | None = None) -> None:
        self.finish, self.error = reason, error

    def add(self, ids: list[int], model: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.mask += [int(model)] * len(ids)
        self.logprobs += logprobs if model else [0.0] * len(ids)

    def count(self, name: str, value: float = 1.0) -> None:
        self.stats[name] = self.stats.get(name, 0.0) + value


class EpisodeRunner:
    """Plays episodes of the environment ``env_cfg.path`` with a rollout worker's engine."""

    def __init__(
        self,
        env_cfg: EnvConfig,
        tokenizer: Any,
        search_dirs: Sequence[Path] = (),
        prompt_column: str = "prompt",
        system_prompt: str | None = None,
    ):
        self.cfg, self.tokenizer = env_cfg, tokenizer
        cls = load_env_class(env_cfg.path, search_dirs)
        if env_cfg.path == "tools":
            from rlft.envs.tools import load_tool_parser, load_tools

            tools = load_tools(env_cfg.tools, search_dirs)
            parser = load_tool_parser(env_cfg.tool_parser, search_dirs)
            params = {"tools": tools, "parser": parser, "prompt_column": prompt_column}
            params |= {"system_prompt": system_prompt, "tool_timeout_s": env_cfg.tool_timeout_s}
            self.make_env = lambda: cls(**params, **env_cfg.params)
        else:
            self.make_env = lambda: cls(**env_cfg.params)
        self._schemas: dict[int, list[dict[str, Any]]] = {}

    def check(self) -> None:
        """Fail now, naming the problem, if the environment cannot even be created (wrong
        ``env.params``) or the tokenizer has no chat template."""
        try:
            env = self.make_env()
        except Exception as err:
            raise TypeError(
                f"env.path={self.cfg.path}: creating the environment with env.params="
                f"{dict(self.cfg.params)} failed: {type(err).__name__}: {err}"
            ) from err
        ChatRenderer(self.tokenizer, self._tool_schemas(env), self.cfg.chat_template)

    def run(
        self, generate: Generate, rows: list[dict[str, Any]], n: int, sampling: SamplingConfig, seed: int
    ) -> list[list[Episode]]:
        """``n`` episodes of each row, in row order."""
        cfg = self.cfg
        live = [self._start(row) for row in rows for _ in range(n)]
        turn_sampling = replace(
            sampling, max_new_tokens=cfg.max_new_tokens_per_turn or sampling.max_new_tokens
        )
        for turn in range(cfg.max_turns):
            playing = [e for e in live if e.finish is None]
            if not playing:
                break
            completions = generate(
                [e.prompt_ids + e.ids for e in playing], turn_sampling, seed * 1_000 + turn
            )
            stepping = []
            for e, c in zip(playing, completions, strict=True):
                budget = cfg.max_episode_tokens - e.length()
                ids, logprobs = c.token_ids[:budget], c.logprobs[:budget]
                text = (
                    c.text
                    if len(ids) == len(c.token_ids)
                    else self.tokenizer.decode(ids, skip_special_tokens=True)
                )
                e.add(ids, True, logprobs)
                e.num_turns += 1
                e.messages.append({"role": "assistant", "content": text})
                if len(ids) < len(c.token_ids) or e.length() >= cfg.max_episode_tokens:
                    e.end("max_tokens")
                else:
                    stepping.append((e, ids))
            results = _call_all(
                [lambda e=e: e.env.step(dict(e.messages[-1])) for e, _ in stepping], cfg.step_timeout_s
            )
            for (e, ids), (outcome, value, seconds) in zip(stepping, results, strict=True):
                e.count("step_s", seconds)
                if self._failed(e, outcome, value, "step()"):
                    continue
                try:
                    self._answer(e, ids, as_step(value), last_turn=turn + 1 == cfg.max_turns)
                except (EnvError, TemplateError) as err:
                    e.end("error", str(err))
        for e in live:
            if e.finish is None:
                e.end("max_turns")
        return self._finish(live, n)

    def _start(self, row: dict[str, Any]) -> _Live:
        """A new episode: the environment created and reset (in this thread; reset is expected to be
        quick), the opening rendered."""
        e = _Live(env=None, row=row)
        try:
            e.env = self.make_env()
            e.messages = list(check_messages(e.env.reset(row), "reset()"))
            e.renderer = ChatRenderer(self.tokenizer, self._tool_schemas(e.env), self.cfg.chat_template)
            e.prompt_ids = e.renderer.opening(e.messages)
        except Exception as err:  # the user's environment: any error ends this episode only
            e.end("error", f"{type(err).__name__} in reset(): {err}")
            e.prompt_ids = self.tokenizer(str(row), add_special_tokens=False)["input_ids"][:8] or [0]
            return e
        if len(e.prompt_ids) >= self.cfg.max_episode_tokens:
            e.end("max_tokens")
        return e

    def _tool_schemas(self, env: Any) -> list[dict[str, Any]] | None:
        tools = getattr(env, "tools", None)
        if not tools:
            return None
        from rlft.envs.tools import tool_schemas

        key = hash(tuple(id(t) for t in tools))
        if key not in self._schemas:
            self._schemas[key] = tool_schemas(tools)
        return self._schemas[key]

    def _failed(self, e: _Live, outcome: str, value: Any, what: str) -> bool:
        if outcome == "ok":
            return False
        if outcome == "timeout":
            e.end("timeout", f"{what} took longer than env.step_timeout_s={self.cfg.step_timeout_s:g} s")
        else:
            e.end("error", f"{value} in {what}")
        return True

    def _answer(self, e: _Live, model_ids: list[int], step: Any, last_turn: bool) -> None:
        """Record the environment's answer to the model's turn and append its tokens."""
        e.turn_rewards.append(math.nan if step.reward is None else float(step.reward))
        for name, value in step.metrics.items():
            e.count(name, float(value))
        history = e.messages[:-1]
        e.messages += step.messages
        if step.done:
            e.end("done")
            return
        if last_turn:
            return  # max_turns: the model would not answer the new messages
        close, rewritten_close = e.renderer.close_turn(history, model_ids)
        delta, rewritten = e.renderer.delta([*history, e.messages[len(history)]], step.messages)
        e.count("template_rewrites", float(rewritten or rewritten_close))
        if e.length() + len(close) + len(delta) >= self.cfg.max_episode_tokens:
            e.end("max_tokens")
            return
        e.add(close + delta, False)

    def _finish(self, live: list[_Live], n: int) -> list[list[Episode]]:
        """Final rewards (concurrently, bounded like steps), then the Episode records by row."""
        scored = [
            e
            for e in live
            if e.finish not in ("error", "timeout") and callable(getattr(e.env, "final_reward", None))
        ]
        finals = dict.fromkeys(map(id, live))
        for e, (outcome, value, _) in zip(
            scored, _call_all([e.env.final_reward for e in scored], self.cfg.step_timeout_s), strict=True
        ):
            if not self._failed(e, outcome, value, "final_reward()"):
                try:
                    finals[id(e)] = check_reward(value, "final_reward()")
                except EnvError as err:
                    e.end("error", str(err))
        episodes = []
        for e in live:
            parts = [r for r in e.turn_rewards if not math.isnan(r)]
            if finals[id(e)] is not None:
                parts.append(finals[id(e)])
            reward = sum(parts) if parts else math.nan
            e.count("errors", float(e.finish == "error"))
            e.count("timeouts", float(e.finish == "timeout"))
            if e.finish in ("error", "timeout"):
                reward = self.cfg.failure_reward
            episodes.append(
                Episode(
                    e.prompt_ids,
                    e.ids,
                    e.mask,
                    e.logprobs,
                    messages=e.messages,
                    reward=reward,
                    turn_rewards=e.turn_rewards,
                    num_turns=e.num_turns,
                    finish_reason=e.finish,
                    error=e.error,
                    stats=e.stats,
                )
            )
        return [episodes[i : i + n] for i in range(0, len(episodes), n)]


def _call_all(calls: list[Callable[[], Any]], timeout_s: float) -> list[tuple[str, Any, float]]:
    """Run every call in its own thread at once; per call ``("ok", result, seconds)``,
    ``("error", "<Type>: <message>", seconds)`` or ``("timeout", None, timeout_s)``. A call past the
    timeout is abandoned (its daemon thread may run on; Python threads cannot be stopped)."""
    results: list[tuple[str, Any, float] | None] = [None] * len(calls)

    def run(i: int, call: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            value = call()
            results[i] = ("ok", value, time.perf_counter() - start)
        except Exception as err:
            results[i] = ("error", f"{type(err).__name__}: {err}", time.perf_counter() - start)

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [r if r is not None else ("timeout", None, timeout_s) for r in results]
