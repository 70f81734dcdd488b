"""Multi-turn environments: token-exact trajectories on two chat templates (hand-checked), the
rewrite strategy, the loop's limits and bad environments, tools and their parser, config."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from rlft.cli import ConfigError, load_config
from rlft.config import EnvConfig, SamplingConfig
from rlft.envs import Step
from rlft.envs.loop import EpisodeRunner
from rlft.envs.render import ChatRenderer
from rlft.envs.tools import ToolEnv, hermes_tool_calls, python, tool_schemas
from rlft.rollout.engine import Completion

ROOT = Path(__file__).resolve().parents[1]

# A Qwen2.5-style template (ChatML; default system message; tools in the system message; tool
# results as user turns of <tool_response> blocks, consecutive ones merged), written for these tests.
QWEN25_STYLE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n'"
    " + (messages[0].content if messages[0].role == 'system' else 'You are helpful.')"
    " + '\\n\\n<tools>' }}{%- for t in tools %}{{- '\\n' + (t | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'system' and loop.first %}"
    "{%- elif m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# A Llama-3-style template (header tokens, <|eot_id|> ends a turn with no newline, contents trimmed,
# tool results under the ipython role), written for these tests.
LLAMA3_STYLE = (
    "{{- '<|begin_of_text|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + ('ipython' if m.role == 'tool' else m.role) + '<|end_header_id|>\\n\\n'"
    " + m.content | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# A Qwen3-style template that drops the reasoning (<think>...</think>) of assistant turns before the
# last user message: it rewrites earlier turns, so renders are not append-only.
STRIPS_REASONING = (
    "{%- set ns = namespace(last=-1) %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{%- set ns.last = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for m in messages %}"
    "{%- set content = m.content %}"
    "{%- if m.role == 'assistant' and loop.index0 < ns.last and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1] | trim %}{%- endif %}"
    "{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's tokenizer (ChatML special tokens) plus Llama-3's header and turn tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ]
        }
    )
    return tok


class Scripted:
    """A fake engine: turn t of every episode 'samples' the token ids of ``turns[t]`` (with
    log-prob -0.5 - 0.01 * i for its i-th token); records each call's prompts."""

    def __init__(self, tokenizer: Any, turns: list[str], max_tokens: int | None = None):
        self.tok, self.turns, self.max_tokens = tokenizer, turns, max_tokens
        self.sampled: list[list[int]] = []
        self.prompts: list[list[list[int]]] = []

    def __call__(self, prompts: list[list[int]], sampling: SamplingConfig, seed: int) -> list[Completion]:
        self.prompts.append([list(p) for p in prompts])
        ids = self.tok(self.turns[len(self.prompts) - 1], add_special_tokens=False)["input_ids"]
        ids = ids[: sampling.max_new_tokens]
        self.sampled.append(ids)
        text = self.tok.decode(ids, skip_special_tokens=True)
        return [
            Completion(list(ids), [-0.5 - 0.01 * i for i in range(len(ids))], text, "stop") for _ in prompts
        ]


class Echo:
    """An environment that answers every assistant message with a fixed user message; done at the
    third turn; turn reward = turn number; final reward 10."""

    def __init__(self, reply: str = "No, it is 3.", tool: bool = False):
        self.reply, self.tool, self.turn = reply, tool, 0

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, message: dict[str, Any]) -> Step:
        self.turn += 1
        role = "tool" if self.tool else "user"
        return Step([{"role": role, "content": self.reply}], reward=float(self.turn), done=self.turn == 3)

    def final_reward(self) -> float:
        return 10.0


def _runner(tokenizer: Any, env: Any, template: str | None = None, **cfg: Any) -> EpisodeRunner:
    runner = EpisodeRunner(EnvConfig(path="tests/test_envs.py:Echo", **cfg), tokenizer, [ROOT])
    runner.make_env = env
    if template is not None:
        tokenizer = _with_template(tokenizer, template)
        runner.tokenizer = tokenizer
    return runner


def _with_template(tokenizer: Any, template: str) -> Any:
    import copy

    tok = copy.copy(tokenizer)
    tok.chat_template = template
    return tok


def _ids(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- token exactness, hand-checked


def test_qwen25_style_trajectory_is_sampled_ids_plus_template_deltas(tokenizer: Any) -> None:
    """Three turns with tool messages on the Qwen2.5-style template: the episode's ids are the
    opening render, then each turn's sampled ids, then the hand-written ChatML delta ('\\n' after
    <|im_end|>, the tool turn, the generation prompt); the mask marks exactly the sampled ids and
    the log-probs are the sampler's there."""
    tok = _with_template(tokenizer, QWEN25_STYLE)
    turns = ["guess 5<|im_end|>", "guess 4<|im_end|>", "it is 3<|im_end|>"]
    engine = Scripted(tok, turns)
    runner = _runner(tok, lambda: Echo(tool=True), QWEN25_STYLE, max_turns=5)
    (episode,) = runner.run(engine, [{"prompt": "Guess."}], 1, SamplingConfig(max_new_tokens=16), 0)[0]

    opening = (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nGuess.<|im_end|>\n<|im_start|>assistant\n"
    )
    delta = (
        "\n<|im_start|>user\n<tool_response>\nNo, it is 3.\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert episode.prompt_ids == _ids(tok, opening)
    s = engine.sampled
    d = _ids(tok, delta)
    assert episode.completion_ids == s[0] + d + s[1] + d + s[2]
    assert episode.loss_mask == [1] * len(s[0]) + [0] * len(d) + [1] * len(s[1]) + [0] * len(d) + [1] * len(
        s[2]
    )
    model_logprobs = [lp for lp, m in zip(episode.sampler_logprobs, episode.loss_mask, strict=True) if m]
    assert model_logprobs == [-0.5 - 0.01 * i for t in s for i in range(len(t))]
    assert all(lp == 0.0 for lp, m in zip(episode.sampler_logprobs, episode.loss_mask, strict=True) if not m)
    # what the engine saw each turn is the episode so far
    assert engine.prompts[1][0] == episode.prompt_ids + s[0] + d
    assert tok.decode(episode.prompt_ids + episode.completion_ids) == (
        opening + "guess 5<|im_end|>" + delta + "guess 4<|im_end|>" + delta + "it is 3<|im_end|>"
    )
    assert episode.finish_reason == "done" and episode.num_turns == 3
    assert episode.turn_rewards == [1.0, 2.0, 3.0] and episode.reward == 16.0  # 1 + 2 + 3 + final 10


def test_llama3_style_trajectory_is_sampled_ids_plus_template_deltas(tokenizer: Any) -> None:
    """The Llama-3-style template: no newline after <|eot_id|> (nothing to close after the EOS the
    model sampled); a turn cut at max_new_tokens gets the template's <|eot_id|> appended (mask 0);
    the trimmed re-render of the model's text (' guess 5 ') does not touch the sampled tokens."""
    tok = _with_template(tokenizer, LLAMA3_STYLE)
    engine = Scripted(tok, [" guess 5 <|eot_id|>", "guess four then five"], max_tokens=None)
    runner = _runner(tok, Echo, LLAMA3_STYLE, max_turns=2, max_new_tokens_per_turn=3)
    engine.turns[0] = " 5<|eot_id|>"
    (episode,) = runner.run(engine, [{"prompt": "Guess."}], 1, SamplingConfig(max_new_tokens=16), 0)[0]

    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    opening = "<|begin_of_text|>" + header.format("user") + "Guess.<|eot_id|>" + header.format("assistant")
    delta = header.format("user") + "No, it is 3.<|eot_id|>" + header.format("assistant")
    s = engine.sampled
    assert s[0] == _ids(tok, " 5<|eot_id|>") and len(s[1]) == 3  # the second turn was cut at 3 tokens
    assert episode.prompt_ids == _ids(tok, opening)
    assert episode.completion_ids == s[0] + _ids(tok, delta) + s[1]
    assert episode.loss_mask == [1] * len(s[0]) + [0] * len(_ids(tok, delta)) + [1] * 3
    assert episode.finish_reason == "max_turns" and episode.num_turns == 2


def test_close_turn_adds_the_template_end_when_the_model_did_not_stop(tokenizer: Any) -> None:
    """ChatML: the model stopped on <|im_end|> -> only '\\n' is added; cut short -> '<|im_end|>\\n'.
    Llama-3: stopped on <|eot_id|> -> nothing; cut short -> '<|eot_id|>'."""
    history = [{"role": "user", "content": "hi"}]
    chatml = ChatRenderer(tokenizer, chat_template=QWEN25_STYLE)
    llama = ChatRenderer(tokenizer, chat_template=LLAMA3_STYLE)
    assert chatml.close_turn(history, _ids(tokenizer, "yes<|im_end|>")) == (_ids(tokenizer, "\n"), False)
    assert chatml.close_turn(history, _ids(tokenizer, "yes")) == (_ids(tokenizer, "<|im_end|>\n"), False)
    assert llama.close_turn(history, _ids(tokenizer, "yes<|eot_id|>")) == ([], False)
    assert llama.close_turn(history, _ids(tokenizer, "yes")) == (_ids(tokenizer, "<|eot_id|>"), False)


def test_template_that_rewrites_earlier_turns_keeps_them_as_sampled(tokenizer: Any) -> None:
    """A template that strips past reasoning fails the prefix check once a new user message comes;
    the earlier turn stays as sampled (reasoning included) and the new message is the render after
    the neutral history, which is ChatML's usual delta; the rewrite is counted."""
    tok = _with_template(tokenizer, STRIPS_REASONING)
    renderer = ChatRenderer(tok)
    history = [{"role": "user", "content": "Guess."}, {"role": "assistant", "content": "<think>hm</think>5"}]
    new = [{"role": "user", "content": "No."}]
    full = renderer.text([*history, *new], generation_prompt=True)
    assert not full.startswith(renderer.text(history, generation_prompt=False))  # it does rewrite
    assert renderer.delta(history, new) == (
        _ids(tok, "<|im_start|>user\nNo.<|im_end|>\n<|im_start|>assistant\n"),
        True,
    )

    engine = Scripted(tok, ["<think>hm</think>5<|im_end|>", "3<|im_end|>"])
    runner = _runner(tok, lambda: Echo("No."), STRIPS_REASONING, max_turns=2)
    (episode,) = runner.run(engine, [{"prompt": "Guess."}], 1, SamplingConfig(max_new_tokens=16), 0)[0]
    text = tok.decode(episode.prompt_ids + episode.completion_ids)
    assert text == (
        "<|im_start|>user\nGuess.<|im_end|>\n<|im_start|>assistant\n<think>hm</think>5<|im_end|>\n"
        "<|im_start|>user\nNo.<|im_end|>\n<|im_start|>assistant\n3<|im_end|>"
    )
    assert episode.stats["template_rewrites"] == 1.0


# ---------------------------------------------------------------- limits and bad environments


def test_max_episode_tokens_cuts_the_episode_and_counts_it(tokenizer: Any) -> None:
    engine = Scripted(tokenizer, ["a b c d e f g h<|im_end|>"] * 3)
    runner = _runner(tokenizer, Echo, max_turns=3, max_episode_tokens=20)
    (episode,) = runner.run(engine, [{"prompt": "Guess."}], 1, SamplingConfig(max_new_tokens=16), 0)[0]
    assert episode.finish_reason == "max_tokens"
    assert len(episode.prompt_ids) + len(episode.completion_ids) <= 20


class Broken:
    """Misbehaves in the way ``how`` says."""

    def __init__(self, how: str):
        self.how = how

    def reset(self, row: dict[str, Any]) -> Any:
        if self.how == "reset raises":
            raise KeyError("no such column")
        if self.how == "reset wrong type":
            return "hello"
        return [{"role": "user", "content": "go"}]

    def step(self, message: dict[str, Any]) -> Any:
        if self.how == "step raises":
            raise RuntimeError("boom")
        if self.how == "step hangs":
            time.sleep(5)
        if self.how == "step wrong type":
            return {"messages": []}
        if self.how == "bad reward":
            return Step([], reward="high", done=True)
        return Step(done=True)

    def final_reward(self) -> Any:
        return "1.0" if self.how == "final wrong type" else 1.0


@pytest.mark.parametrize(
    ("how", "finish", "message"),
    [
        ("reset raises", "error", "KeyError in reset\\(\\)"),
        ("reset wrong type", "error", "reset\\(\\) must return a list of messages"),
        ("step raises", "error", "RuntimeError: boom in step\\(\\)"),
        ("step hangs", "timeout", "step\\(\\) took longer than env.step_timeout_s=0.3"),
        ("step wrong type", "error", "step\\(\\) must return rlft.envs.Step"),
        ("bad reward", "error", "returned reward 'high'"),
        ("final wrong type", "error", "final_reward\\(\\) returned '1.0'"),
    ],
)
def test_a_broken_environment_ends_its_episode_only(
    tokenizer: Any, how: str, finish: str, message: str
) -> None:
    """Each broken episode ends with a counted error and env.failure_reward; the good episode of the
    same batch is unaffected."""
    engine = Scripted(tokenizer, ["x<|im_end|>"] * 2)
    envs = iter([Broken(how), Broken("fine")])
    runner = _runner(tokenizer, lambda: next(envs), max_turns=2, step_timeout_s=0.3, failure_reward=-1.0)
    (bad,), (good,) = runner.run(
        engine, [{"prompt": "a"}, {"prompt": "b"}], 1, SamplingConfig(max_new_tokens=4), 0
    )
    assert bad.finish_reason == finish and bad.reward == -1.0
    assert bad.stats["errors" if finish == "error" else "timeouts"] == 1.0
    import re

    assert re.search(message, bad.error), bad.error
    assert good.finish_reason == "done" and good.reward == 1.0 and good.error is None


def test_missing_environment_file_or_class_is_a_clear_error(tokenizer: Any) -> None:
    with pytest.raises(FileNotFoundError, match=r"environment spec 'nope.py:Env': file 'nope.py' not found"):
        EpisodeRunner(EnvConfig(path="nope.py:Env"), tokenizer, [ROOT])
    with pytest.raises(AttributeError, match=r"has no function 'Nope'; its callables are: .*GuessEnv"):
        EpisodeRunner(EnvConfig(path="envs/guess.py:Nope"), tokenizer, [ROOT])
    with pytest.raises(TypeError, match="has no reset or step method"):
        EpisodeRunner(EnvConfig(path="envs/guess.py:Step"), tokenizer, [ROOT])
    with pytest.raises(TypeError, match="feedback='loud'"):
        EpisodeRunner(
            EnvConfig(path="envs/guess.py:GuessEnv", params={"feedback": "loud"}), tokenizer, [ROOT]
        ).check()


def test_env_config_keys_are_typed() -> None:
    cfg = load_config(["recipe=guess_digit"])
    assert cfg.env.path == "envs/guess.py:GuessEnv" and cfg.env.params == {
        "feedback": "reveal",
        "partial_credit": True,
    }
    assert load_config([]).env.path is None  # no env: single-turn, as before
    assert load_config(["env=tools", "env.tools=[python]"]).env.path == "tools"
    with pytest.raises(ConfigError, match=r"env.max_turnz"):
        load_config(["env.max_turnz=3"])
    with pytest.raises(ConfigError, match=r"env.tools"):
        load_config(["env.tools=[python]"])  # tools without env=tools


# ---------------------------------------------------------------- tools


def test_hermes_parser_reads_calls_and_names_malformed_ones() -> None:
    text = (
        'I will add. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 3}"}</tool_call>'
        "<tool_call>{name: add}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "add"'
    )
    calls = hermes_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls[:2]] == [("add", {"a": 1, "b": 2}), ("add", {"a": 3})]
    assert "not valid JSON" in calls[2].error
    assert "must be" in calls[3].error
    assert "not closed" in calls[4].error
    assert hermes_tool_calls("no calls here") == []


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def slow(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "done"


def test_tool_env_runs_calls_and_reports_errors_back() -> None:
    env = ToolEnv([add, slow], tool_timeout_s=0.2)
    assert env.reset({"prompt": "What is 2 + 3?"}) == [{"role": "user", "content": "What is 2 + 3?"}]
    step = env.step(
        {
            "role": "assistant",
            "content": '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
            '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>'
            '<tool_call>{"name": "mul", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "slow", "arguments": {"seconds": 2}}</tool_call>'
            "<tool_call>oops</tool_call>",
        }
    )
    contents = [m["content"] for m in step.messages]
    assert contents[0] == "5"
    assert (
        contents[1].startswith("error: TypeError") and "missing 1 required positional argument" in contents[1]
    )
    assert contents[2].startswith("error: there is no tool 'mul'")
    assert contents[3] == "error: the tool slow took longer than 0.2 s"
    assert contents[4].startswith("error: the tool call is not valid JSON")
    assert step.metrics == {"tool_calls": 5.0, "tool_errors": 3.0, "malformed_tool_calls": 1.0}
    assert not step.done
    assert env.step({"role": "assistant", "content": "The answer is 5."}).done


def test_tool_schemas_reach_the_chat_template(tokenizer: Any) -> None:
    (schema,) = tool_schemas([add])
    assert schema["function"]["name"] == "add"
    assert schema["function"]["parameters"]["properties"]["a"] == {
        "type": "integer",
        "description": "The first number.",
    }
    text = ChatRenderer(tokenizer, [schema], QWEN25_STYLE).text([{"role": "user", "content": "hi"}], True)
    assert '"name": "add"' in text and text.startswith("<|im_start|>system\nYou are helpful.\n\n<tools>\n{")


def test_python_tool_runs_in_the_sandbox() -> None:
    assert python("print(6 * 7)") == "42"
    assert python("1 / 0").startswith("ZeroDivisionError")
    assert python("import socket; socket.socket().connect(('1.1.1.1', 80))").startswith(
        ("PermissionError", "OSError", "RuntimeError")
    )


def test_tools_env_loads_builtin_and_file_tools(tokenizer: Any) -> None:
    runner = EpisodeRunner(
        EnvConfig(path="tools", tools=["python", "tests/test_envs.py:add"]), tokenizer, [ROOT]
    )
    env = runner.make_env()
    assert [t.__name__ for t in env.tools] == ["python", "add"]
    with pytest.raises(TypeError, match=r"tool 'tests/test_envs.py:_ids': no JSON schema"):
        EpisodeRunner(EnvConfig(path="tools", tools=["tests/test_envs.py:_ids"]), tokenizer, [ROOT])


def test_turn_rewards_none_and_final_reward_none_give_nan(tokenizer: Any) -> None:
    class Silent(Echo):
        def step(self, message: dict[str, Any]) -> Step:
            return Step(done=True)

        def final_reward(self) -> None:
            return None

    engine = Scripted(tokenizer, ["x<|im_end|>"])
    (episode,) = _runner(tokenizer, Silent).run(
        engine, [{"prompt": "a"}], 1, SamplingConfig(max_new_tokens=4), 0
    )[0]
    assert math.isnan(episode.reward) and math.isnan(episode.turn_rewards[0])
