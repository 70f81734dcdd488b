"""Hub environments as agents: ``agent.verifiers`` (PyPI ``verifiers``) and ``agent.openenv``
(PyPI ``openenv-core``). Each becomes an ``async run(client, row)`` of :mod:`rlft.rollout.agents`,
so it runs through the rollout worker's endpoint like any agent: every model call is recorded,
merged by the token-prefix rule and trained on. Both packages are optional extras
(``pip install 'rlft[verifiers]'`` / ``'rlft[openenv]'``), imported only here, when used.

**verifiers** (the ``verifiers.envs`` API: ``SingleTurnEnv``, ``MultiTurnEnv``, ``ToolEnv``, ...):
``agent.verifiers=my_env.py:load_environment`` names an Environment or a function returning one.
Each row becomes one rollout input: ``prompt`` (a string becomes the env's system prompt, if it
has one, and a user message; a list is taken as messages), ``answer`` and ``info``. The
environment talks to the endpoint through its own OpenAI chat client wrapper, runs its turns and
tools, and its rubric's score (the weighted sum of its reward functions) is the reward. A
rollout the environment marks as errored fails the episode.

**openenv** (``openenv.core`` Environments): ``agent.openenv=my_env.py:MyEnv`` names an Environment
class or factory; one is made per episode. ``reset`` gets the row's columns as keywords (if it
takes ``**kwargs``); each observation becomes a user message (its single text field, or its
fields as JSON, without done / reward / metadata); the model's reply becomes the action (the
environment's action class must have exactly one required text field, which gets the reply's
text); at most ``agent.max_turns`` replies, until an observation is ``done``. The reward is the sum
of the observations' rewards.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

VERIFIERS_MISSING = "agent.verifiers needs the verifiers package: pip install 'rlft[verifiers]'"
OPENENV_MISSING = "agent.openenv needs the openenv-core package: pip install 'rlft[openenv]'"


def verifiers_agent(target: Any, spec: str) -> Callable[..., Any]:
    """The verifiers environment ``target`` (or what calling it returns) as an async agent."""
    try:
        import verifiers as vf
        from verifiers.clients import OpenAIChatCompletionsClient
    except ImportError as err:
        raise ImportError(VERIFIERS_MISSING) from err
    env = target if isinstance(target, vf.Environment) else target()
    if not isinstance(env, vf.Environment):
        raise TypeError(
            f"verifiers environment spec {spec!r} gave a {type(env).__name__}, not a verifiers "
            "Environment; name an Environment or a function returning one (e.g. load_environment)"
        )

    async def run(client: Any, row: dict[str, Any]) -> float:
        prompt = row.get("prompt", "")
        if isinstance(prompt, str):
            system = [{"role": "system", "content": env.system_prompt}] if env.system_prompt else []
            prompt = [*system, {"role": "user", "content": prompt}]
        rollout_input = {
            "prompt": prompt,
            "answer": str(row.get("answer", "")),
            "info": row.get("info") or {},
            "example_id": row.get("example_id", 0),
        }
        output = await env.run_rollout(rollout_input, OpenAIChatCompletionsClient(client), "rlft", {})
        if output.get("error"):
            raise RuntimeError(f"the verifiers rollout failed: {output['error']}")
        return float(output["reward"])

    run.__name__ = f"verifiers:{type(env).__name__}"
    return run


def openenv_agent(factory: Callable[..., Any], spec: str, max_turns: int) -> Callable[..., Any]:
    """The openenv-core environment made by ``factory`` as an async agent (module docstring)."""
    try:
        from openenv.core import Environment
    except ImportError as err:
        raise ImportError(OPENENV_MISSING) from err
    probe = factory()
    if not isinstance(probe, Environment):
        raise TypeError(
            f"openenv environment spec {spec!r} made a {type(probe).__name__}, not an "
            "openenv.core Environment; name an Environment subclass or a function returning one"
        )
    action_class, field_name = _text_action(probe, spec)
    _close(probe)
    takes_row = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(probe.reset).parameters.values())

    async def run(client: Any, row: dict[str, Any]) -> float:
        env = factory()
        try:
            observation = await env.reset_async(**(row if takes_row else {}))
            messages: list[dict[str, Any]] = []
            total = 0.0
            for _ in range(max_turns):
                if observation.done:
                    break
                messages.append({"role": "user", "content": _observation_text(observation)})
                reply = await client.chat.completions.create(model="rlft", messages=messages)
                text = reply.choices[0].message.content or ""
                messages.append({"role": "assistant", "content": text})
                observation = await env.step_async(action_class(**{field_name: text}))
                total += float(observation.reward or 0.0)
            return total
        finally:
            _close(env)

    run.__name__ = f"openenv:{type(probe).__name__}"
    return run


def _text_action(env: Any, spec: str) -> tuple[type, str]:
    """The action class of ``env.step`` and its one required text field."""
    try:
        action_class = typing.get_type_hints(type(env).step).get("action")
    except Exception:  # unresolvable annotations: reported below
        action_class = None
    fields = getattr(action_class, "model_fields", {})
    required = [name for name, f in fields.items() if f.is_required()]
    if len(required) != 1 or fields[required[0]].annotation is not str:
        raise TypeError(
            f"openenv environment spec {spec!r}: its step(action) must be annotated with an Action "
            f"class that has exactly one required str field (the model's reply); got {action_class!r} "
            f"with required fields {required}"
        )
    return action_class, required[0]


def _observation_text(observation: Any) -> str:
    fields = observation.model_dump(exclude={"done", "reward", "metadata"})
    texts = [v for v in fields.values() if isinstance(v, str)]
    return texts[0] if len(fields) == 1 and texts else json.dumps(fields, default=str)


def _close(env: Any) -> None:
    close = getattr(env, "close", None)
    if callable(close):
        close()
