"""An OpenAI-compatible HTTP endpoint over a rollout worker's engine, serving agent episodes.

``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` (FastAPI, served by uvicorn in a
background thread of the rollout worker, only while its agent episodes run). Requests that arrive
together are batched into one ``engine.generate`` call (the engine runs one call at a time); every
completion returned is recorded as a :class:`~rlft.rollout.calls.Call` of the episode that asked:
the exact prompt ids the engine was given, the ids it sampled and their sampler log-probabilities.

**Who is asking.** Each episode gets its own API key, ``<run token>.<episode id>``: the run token
is random per endpoint (``secrets``), so nothing else on the machine can use the engine, and the
episode id says whose calls these are. A closed episode's key is refused.

**Sampling.** What the learner recomputes is fixed by ``rollout.sampling``, so the engine always
samples at its temperature / top-p / top-k; a request's ``max_tokens`` (capped at
``rollout.sampling.max_new_tokens``), ``stop`` and ``n`` are honoured, its other sampling fields
are ignored.

**Token-exact conversations.** A chat request whose messages are an earlier call's messages, then
the reply that call returned (content and tool calls equal), then new messages, is not rendered
afresh: its prompt is that call's prompt ids + the ids it sampled + the chat template's delta
after the reply (the template's text for the whole conversation minus its text up to the reply,
whose end-of-turn token the model sampled itself). The delta is tokenized; the model's tokens
never are. The prompt then extends the earlier call's tokens, and
:func:`~rlft.rollout.calls.calls_to_episodes` merges the two into one trajectory. When the
template does not render the conversation as an extension of the earlier one (e.g. it drops
earlier reasoning), the request is rendered afresh and becomes a trajectory of its own. A
``/v1/completions`` prompt continues an earlier call the same way when it is given as token ids,
or as text starting with that call's prompt text + its completion decoded with special tokens.

**Limits.** Bodies over ``agent.max_request_bytes`` (413), prompts over
``agent.max_context_tokens`` (400), more than ``agent.max_requests_in_flight`` requests at once
or ``agent.max_calls_per_episode`` calls of one episode (429). Streaming is not offered (400).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from rlft.config import AgentConfig, SamplingConfig
from rlft.rollout.calls import Call
from rlft.rollout.engine import Completion, Engine

logger = logging.getLogger("rlft.endpoint")

ToolParser = Callable[[str], list[Any]]
"""Text of a reply -> its tool calls (``rlft.envs.tools.ToolCall``: name, arguments, or error)."""


class RequestError(Exception):
    """A request the endpoint refuses, with its HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class _ChatTurn:
    """What continuing a chat call needs: its normalised request, reply and exact tokens."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    prompt_text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    reply: dict[str, Any]


@dataclass
class _EpisodeLog:
    calls: list[Call] = field(default_factory=list)
    turns: list[_ChatTurn] = field(default_factory=list)
    requests: int = 0
    open: bool = True


@dataclass
class _Pending:
    prompt_ids: list[int]
    n: int
    max_tokens: int
    stop: tuple[str, ...]
    future: asyncio.Future


class Endpoint:
    """The endpoint of one rollout worker: :meth:`start`, :meth:`open_episode` per episode (its
    API key), :meth:`close_episode` (its calls), :meth:`stop`. A context manager."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        sampling: SamplingConfig,
        cfg: AgentConfig,
        model_name: str = "rlft",
        seed: int = 0,
        tool_parser: ToolParser | None = None,
    ):
        self.engine, self.tokenizer, self.sampling, self.cfg = engine, tokenizer, sampling, cfg
        self.model_name, self.seed, self.tool_parser = model_name, seed, tool_parser
        self.token = secrets.token_urlsafe(24)
        self._episodes: dict[str, _EpisodeLog] = {}
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._dispatching = False
        self._in_flight = 0
        self._batches = 0
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix="rlft-endpoint-engine")
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.stats = {"requests": 0, "engine_calls": 0, "refused": 0}

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Endpoint:
        """Serve in a background thread; returns once the socket listens."""
        import uvicorn

        config = uvicorn.Config(
            self._app(), host=self.cfg.host, port=self.cfg.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="rlft-endpoint", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the agent endpoint could not listen on {self.cfg.host}:{self.cfg.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop serving (every episode is closed first, so no new request reaches the engine)."""
        with self._lock:
            for log in self._episodes.values():
                log.open = False
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = None
        self._engine_thread.shutdown(wait=True)

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, what an ``openai`` client's ``base_url`` is set to."""
        return f"http://{self.cfg.host}:{self.port}/v1"

    def open_episode(self) -> str:
        """A new episode; returns the API key its agent calls with."""
        episode_id = uuid.uuid4().hex
        with self._lock:
            self._episodes[episode_id] = _EpisodeLog()
        return f"{self.token}.{episode_id}"

    def close_episode(self, api_key: str) -> list[Call]:
        """End the episode (its key is refused from now on) and return its calls in order."""
        with self._lock:
            log = self._episodes.pop(api_key.rpartition(".")[2])
            log.open = False
            return list(log.calls)

    @property
    def open_episodes(self) -> int:
        with self._lock:
            return sum(log.open for log in self._episodes.values())

    # --- HTTP ----------------------------------------------------------------------------------------

    def _app(self) -> Any:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        app = FastAPI(title="rlft agent endpoint", docs_url=None, redoc_url=None, openapi_url=None)

        def error(err: RequestError) -> JSONResponse:
            self.stats["refused"] += 1
            body = {"error": {"message": str(err), "type": err.kind, "param": None, "code": err.status}}
            return JSONResponse(body, status_code=err.status)

        async def handle(request: Any, kind: str) -> JSONResponse:
            if self._in_flight >= self.cfg.max_requests_in_flight:
                return error(RequestError(429, "too many requests in flight", "rate_limit_error"))
            self._in_flight += 1
            try:
                log = self._authorize(request.headers.get("authorization", ""))
                if kind == "models":
                    return JSONResponse(self._models())
                body = await self._read_json(request)
                log.requests += 1
                if log.requests > self.cfg.max_calls_per_episode:
                    raise RequestError(
                        429,
                        f"this episode made over agent.max_calls_per_episode="
                        f"{self.cfg.max_calls_per_episode} requests",
                        "rate_limit_error",
                    )
                self.stats["requests"] += 1
                handler = self._chat if kind == "chat" else self._completions
                return JSONResponse(await handler(log, body))
            except RequestError as err:
                return error(err)
            except Exception as err:  # a bug or an engine failure: the agent gets a 500, not a hang
                logger.exception("agent endpoint: the request failed")
                return error(RequestError(500, f"{type(err).__name__}: {err}", "server_error"))
            finally:
                self._in_flight -= 1

        # Plain (starlette) routes: the handlers read the body themselves, with the size cap.
        for path, kind, method in (
            ("/v1/chat/completions", "chat", "POST"),
            ("/v1/completions", "completions", "POST"),
            ("/v1/models", "models", "GET"),
        ):
            app.router.add_route(path, functools.partial(handle, kind=kind), methods=[method])
        return app

    def _authorize(self, header: str) -> _EpisodeLog:
        scheme, _, key = header.partition(" ")
        token, _, episode_id = key.rpartition(".")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), self.token.encode()):
            raise RequestError(401, "missing or wrong API key", "authentication_error")
        with self._lock:
            log = self._episodes.get(episode_id)
        if log is None or not log.open:
            raise RequestError(403, "this episode is over; its key no longer works", "permission_error")
        return log

    async def _read_json(self, request: Any) -> dict[str, Any]:
        limit = self.cfg.max_request_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise RequestError(413, f"request body over agent.max_request_bytes={limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"request body over agent.max_request_bytes={limit}")
        try:
            data = json.loads(body)
        except ValueError as err:
            raise RequestError(400, f"the body is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise RequestError(400, "the body must be a JSON object")
        if data.get("stream"):
            raise RequestError(400, "stream=true is not supported by the rlft endpoint; leave it off")
        return data

    def _models(self) -> dict[str, Any]:
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "rlft"}
        return {"object": "list", "data": [model]}

    # --- chat ---------------------------------------------------------------------------------------

    async def _chat(self, log: _EpisodeLog, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise RequestError(400, "'messages' must be a non-empty list")
        messages = [normalize_message(m) for m in body["messages"]]
        tools = body.get("tools") or None
        prompt_text = self._render(messages, tools, generation_prompt=True)
        prompt_ids = self._continuation(log, messages, tools, prompt_text) or self._encode(prompt_text)
        n, max_tokens, stop = self._generation_args(body, prompt_ids)
        completions = await self._generate(prompt_ids, n, max_tokens, stop)
        choices = []
        for i, c in enumerate(completions):
            text = _strip_stop(c, stop)
            content, tool_calls = self._tool_calls(text) if tools else (text, [])
            reply: dict[str, Any] = {"role": "assistant", "content": content}
            if tool_calls:
                reply["tool_calls"] = tool_calls
            finish = "tool_calls" if tool_calls else c.finish_reason
            call = Call(prompt_ids, c.token_ids, c.logprobs, finish, [*messages, reply], text)
            with self._lock:
                log.calls.append(call)
                log.turns.append(
                    _ChatTurn(messages, tools, prompt_text, prompt_ids, c.token_ids, normalize_message(reply))
                )
            choice: dict[str, Any] = {"index": i, "message": reply, "finish_reason": finish, "logprobs": None}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": self._token_logprobs(c)}
            if body.get("return_token_ids"):
                choice["token_ids"] = c.token_ids
            choices.append(choice)
        return self._response("chat.completion", choices, prompt_ids, completions, body)

    def _tool_calls(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """The reply's content and its tool calls in OpenAI's format, read by the tool parser (the
        native tool path's): the content is the text before the first call. A reply whose calls
        are all malformed is plain content (the agent sees the text as the model wrote it)."""
        calls = [c for c in self.tool_parser(text) if c.error is None] if self.tool_parser else []
        if not calls:
            return text, []
        tool_calls = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in calls
        ]
        return text.split("<tool_call>", 1)[0].strip(), tool_calls

    def _render(self, messages: list[dict[str, Any]], tools: Any, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
            )
        except Exception as err:  # the template's own complaint (a role it does not know, ...)
            raise RequestError(400, f"the chat template cannot render these messages: {err}") from err

    def _continuation(
        self, log: _EpisodeLog, messages: list[dict[str, Any]], tools: Any, full_text: str
    ) -> list[int] | None:
        """The prompt ids of a conversation that continues an earlier call of this episode (the
        module docstring's rule), or None."""
        eos = self.tokenizer.eos_token
        with self._lock:
            turns = list(log.turns)
        for turn in reversed(turns):
            k = len(turn.messages)
            if len(messages) <= k or turn.tools != tools or messages[:k] != turn.messages:
                continue
            if not same_reply(messages[k], turn.reply):
                continue
            turn_text = self._render(messages[: k + 1], tools, generation_prompt=False)
            if not (turn_text.startswith(turn.prompt_text) and full_text.startswith(turn_text)):
                continue
            reply_text = turn_text[len(turn.prompt_text) :]
            end = reply_text.rfind(eos) if eos else -1
            if end < 0:
                continue
            ended = bool(turn.completion_ids) and turn.completion_ids[-1] == self.tokenizer.eos_token_id
            closing = reply_text[end + len(eos) :] if ended else reply_text[end:]
            delta = self._encode(closing + full_text[len(turn_text) :])
            return turn.prompt_ids + turn.completion_ids + delta
        return None

    # --- completions ----------------------------------------------------------------------------------

    async def _completions(self, log: _EpisodeLog, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            prompts = prompt
        else:
            raise RequestError(400, "'prompt' must be a string, a list of token ids, or a list of those")
        choices, all_completions, first_ids = [], [], None
        for prompt_item in prompts:
            prompt_ids = self._completion_prompt_ids(log, prompt_item)
            first_ids = first_ids or prompt_ids
            n, max_tokens, stop = self._generation_args(body, prompt_ids)
            completions = await self._generate(prompt_ids, n, max_tokens, stop)
            for c in completions:
                text = _strip_stop(c, stop)
                with self._lock:
                    log.calls.append(Call(prompt_ids, c.token_ids, c.logprobs, c.finish_reason, [], text))
                choice: dict[str, Any] = {
                    "index": len(choices),
                    "text": text,
                    "finish_reason": c.finish_reason,
                    "logprobs": None,
                }
                if body.get("logprobs") is not None:
                    tokens = self._token_logprobs(c)
                    choice["logprobs"] = {
                        "tokens": [t["token"] for t in tokens],
                        "token_logprobs": [t["logprob"] for t in tokens],
                        "top_logprobs": None,
                        "text_offset": None,
                    }
                if body.get("return_token_ids"):
                    choice["token_ids"] = c.token_ids
                choices.append(choice)
                all_completions.append(c)
        return self._response("text_completion", choices, first_ids, all_completions, body)

    def _completion_prompt_ids(self, log: _EpisodeLog, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            if not all(isinstance(t, int) and 0 <= t < len(self.tokenizer) for t in prompt):
                raise RequestError(400, "a token-id prompt must hold ids of this model's vocabulary")
            return list(prompt)
        with self._lock:
            calls = list(log.calls)
        for call in reversed(calls):
            before = self.tokenizer.decode(call.prompt_ids + call.completion_ids, skip_special_tokens=False)
            if prompt.startswith(before):
                return call.prompt_ids + call.completion_ids + self._encode(prompt[len(before) :])
        return self._encode(prompt)

    # --- generation -------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _generation_args(
        self, body: dict[str, Any], prompt_ids: list[int]
    ) -> tuple[int, int, tuple[str, ...]]:
        if len(prompt_ids) > self.cfg.max_context_tokens:
            raise RequestError(
                400,
                f"the prompt is {len(prompt_ids)} tokens, over agent.max_context_tokens="
                f"{self.cfg.max_context_tokens}",
                "context_length_exceeded",
            )
        n = body.get("n") or 1
        cap = self.sampling.max_new_tokens
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or cap
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not (isinstance(n, int) and 1 <= n <= 16):
            raise RequestError(400, "'n' must be an integer from 1 to 16")
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise RequestError(400, "'max_tokens' must be a positive integer")
        if not (isinstance(stop, list) and len(stop) <= 8 and all(isinstance(s, str) and s for s in stop)):
            raise RequestError(400, "'stop' must be a string or a list of at most 8 non-empty strings")
        return n, min(max_tokens, cap), tuple(stop)

    async def _generate(
        self, prompt_ids: list[int], n: int, max_tokens: int, stop: tuple[str, ...]
    ) -> list[Completion]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(prompt_ids, n, max_tokens, stop, future))
        if not self._dispatching:
            self._dispatching = True
            asyncio.get_running_loop().create_task(self._dispatch())
        return await future

    async def _dispatch(self) -> None:
        """Send the waiting requests to the engine, batched, until none waits. Requests with the
        same ``n`` and stop strings share an engine call, sampled to the longest ``max_tokens``
        among them and cut to each one's own (cutting a sample short is sampling it shorter)."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                waited = 0.0
                while len(self._pending) < self.open_episodes and waited < self.cfg.batch_wait_s:
                    await asyncio.sleep(0.001)
                    waited += 0.001
                batch, self._pending = self._pending, []
                groups: dict[tuple[int, tuple[str, ...]], list[_Pending]] = {}
                for item in batch:
                    groups.setdefault((item.n, item.stop), []).append(item)
                for (n, stop), items in groups.items():
                    sampling = replace(
                        self.sampling, max_new_tokens=max(i.max_tokens for i in items), stop=list(stop)
                    )
                    seed = self.seed * 1_000_003 + self._batches
                    self._batches += 1
                    self.stats["engine_calls"] += 1
                    try:
                        results = await loop.run_in_executor(
                            self._engine_thread,
                            self.engine.generate,
                            [i.prompt_ids for i in items],
                            n,
                            sampling,
                            seed,
                        )
                    except Exception as err:  # every waiting request learns why
                        for item in items:
                            item.future.set_exception(
                                RequestError(500, f"generation failed: {err}", "server_error")
                            )
                        continue
                    for item, group in zip(items, results, strict=True):
                        item.future.set_result([_cut(c, item.max_tokens, self.tokenizer) for c in group])
        finally:
            self._dispatching = False

    # --- responses ---------------------------------------------------------------------------------------

    def _token_logprobs(self, c: Completion) -> list[dict[str, Any]]:
        tokens = self.tokenizer.convert_ids_to_tokens(c.token_ids)
        return [
            {"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
            for t, lp in zip(tokens, c.logprobs, strict=True)
        ]

    def _response(
        self,
        kind: str,
        choices: list[dict[str, Any]],
        prompt_ids: list[int] | None,
        completions: list[Completion],
        body: dict[str, Any],
    ) -> dict[str, Any]:
        generated = sum(len(c.token_ids) for c in completions)
        prompt_tokens = len(prompt_ids or [])
        response: dict[str, Any] = {
            "id": f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": generated,
                "total_tokens": prompt_tokens + generated,
            },
        }
        if body.get("return_token_ids"):
            response["prompt_token_ids"] = prompt_ids
        return response


def _cut(c: Completion, max_tokens: int, tokenizer: Any) -> Completion:
    """``c`` ended after ``max_tokens`` tokens, if it is longer."""
    if len(c.token_ids) <= max_tokens:
        return c
    ids = c.token_ids[:max_tokens]
    return replace(
        c,
        token_ids=ids,
        logprobs=c.logprobs[:max_tokens],
        text=tokenizer.decode(ids, skip_special_tokens=True),
        finish_reason="length",
    )


def _strip_stop(c: Completion, stop: tuple[str, ...]) -> str:
    """The completion's text without the stop string it ended with (OpenAI leaves it out)."""
    for s in stop:
        if c.finish_reason == "stop" and c.text.endswith(s):
            return c.text[: -len(s)]
    return c.text


def normalize_message(message: Any) -> dict[str, Any]:
    """An OpenAI chat message as the chat template takes it: text content (parts joined), tool
    calls with their arguments parsed from JSON, no empty fields."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise RequestError(400, "every message must be an object with a 'role'")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise RequestError(400, "only text content parts are supported")
        content = "".join(str(p.get("text", "")) for p in content)
    out: dict[str, Any] = {"role": message["role"], "content": "" if content is None else str(content)}
    if message.get("tool_calls"):
        out["tool_calls"] = [_normalize_tool_call(t) for t in message["tool_calls"]]
    for key in ("tool_call_id", "name"):
        if message.get(key):
            out[key] = message[key]
    return out


def _normalize_tool_call(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RequestError(400, "a tool call must have a 'function' with a 'name'")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # else the template renders the string as it is
            arguments = json.loads(arguments) if arguments.strip() else {}
    return {
        "id": call.get("id", ""),
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def same_reply(message: dict[str, Any], reply: dict[str, Any]) -> bool:
    """Whether a (normalised) message is the reply the endpoint returned: an assistant message with
    the same content and the same tool calls (names and arguments; ids may differ)."""

    def calls(m: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(t["function"]["name"], t["function"]["arguments"]) for t in m.get("tool_calls", [])]

    return (
        message["role"] == "assistant"
        and message["content"] == reply["content"]
        and calls(message) == calls(reply)
    )
