"""Tool calling: typed Python functions as tools, tool-call parsers, and the generic tool environment.

A tool is a plain function with type hints and a Google-style docstring (``Args:``); its JSON
schema comes from ``transformers.utils.get_json_schema`` and goes to the chat template's
``tools=``. The model calls tools in its output; a parser finds the calls (default: the
Hermes/Qwen format ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; another one by
``env.tool_parser=path/file.py:fn``, ``fn(text) -> list[ToolCall]``). ``env=tools`` runs them
(:class:`ToolEnv`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.envs import Step
from rlft.rewards.loader import load_object


@dataclass
class ToolCall:
    """One tool call found in a model's message."""

    name: str = ""
    arguments: dict[str, Any] | None = None
    error: str | None = None
    """Why the call could not be read (malformed); the model is told so."""


_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


def hermes_tool_calls(text: str) -> list[ToolCall]:
    """The ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks of ``text`` (Hermes,
    Qwen2.5/Qwen3 format), in order; a block that is unclosed or not such JSON is a malformed call."""
    calls = []
    for match in _HERMES.finditer(text):
        body, closed = match.group(1).strip(), bool(match.group(2))
        if not closed:
            calls.append(ToolCall(error="the <tool_call> block is not closed with </tool_call>"))
            continue
        try:
            call = json.loads(body)
        except json.JSONDecodeError as err:
            calls.append(ToolCall(error=f"the tool call is not valid JSON ({err.msg} at char {err.pos})"))
            continue
        arguments = call.get("arguments", {}) if isinstance(call, dict) else None
        if isinstance(arguments, str):  # some models send the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("name"), str)
            or not isinstance(arguments, dict)
        ):
            calls.append(ToolCall(error='a tool call must be {"name": "<tool>", "arguments": {...}}'))
            continue
        calls.append(ToolCall(call["name"], arguments))
    return calls


TOOL_PARSERS: dict[str, Callable[[str], list[ToolCall]]] = {"hermes": hermes_tool_calls}


def load_tool_parser(spec: str, search_dirs: Sequence[Path] = ()) -> Callable[[str], list[ToolCall]]:
    """``hermes`` or a user's ``fn(text) -> list[ToolCall]`` by path."""
    if spec in TOOL_PARSERS:
        return TOOL_PARSERS[spec]
    return load_object(spec, "tool parser", search_dirs=search_dirs)[0]


PYTHON_TOOL_MAX_CHARS = 2000
"""The python tool returns at most this many characters of output (the rest is cut, and says so)."""


def python(code: str) -> str:
    """Run Python code in a sandbox and return what it prints (its standard output), or its error.

    Args:
        code: A complete Python program; use print() to show results.
    """
    from rlft.rewards.sandbox import Sandbox, SandboxLimits, SandboxStopped

    wrapped = (
        "import contextlib as _c, io as _io\n"
        "_rlft_buffer = _io.StringIO()\n"
        "with _c.redirect_stdout(_rlft_buffer):\n"
        "    try:\n"
        f"        exec(compile({code!r}, '<tool>', 'exec'), {{'__name__': '__main__'}})\n"
        "    except BaseException as _e:\n"
        "        print(f'{type(_e).__name__}: {_e}')\n"
        "_rlft_output = _rlft_buffer.getvalue()\n"
    )
    try:
        with Sandbox(wrapped, SandboxLimits(timeout_s=5.0)) as box:
            output = box.names.get("_rlft_output")
    except SandboxStopped as stopped:
        return f"error: the code was stopped ({stopped.status}: {str(stopped)[:200]})"
    if not isinstance(output, str):
        return "error: the code left no output"
    output = output.strip()
    if len(output) > PYTHON_TOOL_MAX_CHARS:
        output = (
            output[:PYTHON_TOOL_MAX_CHARS] + f"... [{len(output) - PYTHON_TOOL_MAX_CHARS} characters cut]"
        )
    return output


BUILTIN_TOOLS: dict[str, Callable[..., Any]] = {"python": python}


def load_tools(specs: Sequence[str], search_dirs: Sequence[Path] = ()) -> list[Callable[..., Any]]:
    """``python`` or user functions by path, each checked to have a JSON schema."""
    from transformers.utils import get_json_schema

    tools = []
    for spec in specs:
        fn = (
            BUILTIN_TOOLS[spec]
            if spec in BUILTIN_TOOLS
            else load_object(spec, "tool", search_dirs=search_dirs)[0]
        )
        try:
            get_json_schema(fn)
        except Exception as err:  # transformers raises its own TypeError subclasses
            raise TypeError(
                f"tool {spec!r}: no JSON schema can be made from it ({err}); a tool needs type hints "
                "and a docstring with an Args: section describing every parameter"
            ) from err
        tools.append(fn)
    return tools


def tool_schemas(tools: Sequence[Callable[..., Any]]) -> list[dict[str, Any]]:
    from transformers.utils import get_json_schema

    return [get_json_schema(fn) for fn in tools]


class ToolEnv:
    """``env=tools``: the row's prompt as the user message; each assistant message's tool calls are
    run and their results sent back as ``tool`` messages; a message without tool calls is the final
    answer (scored by ``reward.functions``). A malformed call or a tool that raises or runs past
    ``tool_timeout_s`` gets an error message back (counted: ``env/tool_errors``,
    ``env/malformed_tool_calls``) and the episode goes on."""

    def __init__(
        self,
        tools: list[Callable[..., Any]],
        parser: Callable[[str], list[ToolCall]] = hermes_tool_calls,
        prompt_column: str = "prompt",
        system_prompt: str | None = None,
        tool_timeout_s: float = 10.0,
    ):
        self.tools, self.parser = tools, parser
        self.by_name = {fn.__name__: fn for fn in tools}
        self.prompt_column, self.system_prompt, self.tool_timeout_s = (
            prompt_column,
            system_prompt,
            tool_timeout_s,
        )

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": str(row[self.prompt_column])}]

    def step(self, message: dict[str, Any]) -> Step:
        calls = self.parser(message["content"])
        if not calls:
            return Step(done=True)
        replies, errors, malformed = [], 0, 0
        for call in calls:
            if call.error is not None:
                malformed += 1
                content = f"error: {call.error}"
            elif call.name not in self.by_name:
                errors += 1
                content = f"error: there is no tool {call.name!r}; the tools are {sorted(self.by_name)}"
            else:
                content, ok = self._run(call)
                errors += not ok
            replies.append({"role": "tool", "name": call.name or "invalid", "content": content})
        metrics = {
            "tool_calls": float(len(calls)),
            "tool_errors": float(errors),
            "malformed_tool_calls": float(malformed),
        }
        return Step(replies, metrics=metrics)

    def _run(self, call: ToolCall) -> tuple[str, bool]:
        """The tool's result as text, and whether it ran (an error message if it raised or hung)."""
        out: dict[str, Any] = {}

        def target() -> None:
            try:
                out["value"] = self.by_name[call.name](**call.arguments)
            except Exception as err:
                out["error"] = f"{type(err).__name__}: {err}"

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(self.tool_timeout_s)
        if thread.is_alive():
            return f"error: the tool {call.name} took longer than {self.tool_timeout_s:g} s", False
        if "error" in out:
            return f"error: {out['error']}", False
        value = out["value"]
        return (value if isinstance(value, str) else json.dumps(value, default=str)), True
