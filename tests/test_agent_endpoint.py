"""The OpenAI-compatible agent endpoint, the agent contract and the calls -> episodes merge rule,
driven by the official ``openai`` client (and smolagents) against the tiny model on loopback."""

from __future__ import annotations

import itertools
import json
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rlft.config import AgentConfig, ModelConfig, SamplingConfig
from rlft.rollout.agents import episode_reward, load_agent, run_agents
from rlft.rollout.calls import Call, calls_to_episodes
from rlft.rollout.endpoint import Endpoint
from rlft.rollout.episode import Episode
from rlft.rollout.hf_engine import HFEngine

SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=8)


class RecordingEngine:
    """The hf engine, keeping every completion it sampled (to compare with what was recorded)."""

    def __init__(self, engine: HFEngine):
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.sampled: list[tuple[list[int], list[int], list[float]]] = []
        self.batch_sizes: list[int] = []

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> Any:
        groups = self.engine.generate(prompts, n, sampling, seed)
        self.batch_sizes.append(len(prompts))
        for prompt, group in zip(prompts, groups, strict=True):
            self.sampled += [(list(prompt), list(c.token_ids), list(c.logprobs)) for c in group]
        return groups


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> RecordingEngine:
    return RecordingEngine(HFEngine(ModelConfig(path=str(tiny_model_dir))))


@pytest.fixture
def endpoint(engine: RecordingEngine) -> Any:
    engine.sampled.clear()
    engine.batch_sizes.clear()
    cfg = AgentConfig(max_calls_per_episode=6, max_context_tokens=400, max_request_bytes=20_000)
    with Endpoint(engine, engine.tokenizer, SAMPLING, cfg, seed=1) as ep:
        yield ep


def client_for(ep: Endpoint, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=ep.base_url, api_key=key, max_retries=0)


def assert_recorded_is_sampled(calls: list[Call], engine: RecordingEngine) -> None:
    """Every recorded call is, token for token, a completion the engine sampled (max_tokens cuts
    a longer sample short)."""
    for call in calls:
        assert any(
            p == call.prompt_ids
            and c[: len(call.completion_ids)] == call.completion_ids
            and lp[: len(call.completion_ids)] == call.sampler_logprobs
            for p, c, lp in engine.sampled
        )


# --- the merge rule (pure) ------------------------------------------------------------------------


def test_merge_rule_extends_when_the_prompt_continues_and_splits_otherwise() -> None:
    a = Call([1, 2], [3, 4], [-0.3, -0.4], "stop")
    b = Call([1, 2, 3, 4, 9, 9], [5], [-0.5], "stop")  # extends a: 9 9 are new prompt tokens
    c = Call([1, 2, 7], [8], [-0.8], "stop")  # rewrote the history: its own trajectory
    d = Call([1, 2, 3, 4, 9, 9, 5, 6], [10, 11], [-1.0, -1.1], "length")  # extends a+b
    e = Call([1, 2, 7, 8], [12], [-1.2], "stop")  # extends c
    episodes, stats = calls_to_episodes([a, b, c, d, e], reward=0.5)
    assert (stats.calls, stats.merged, stats.trajectories) == (5, 3, 2)
    first, second = episodes
    assert first.prompt_ids == [1, 2]
    assert first.completion_ids == [3, 4, 9, 9, 5, 6, 10, 11]
    assert first.loss_mask == [1, 1, 0, 0, 1, 0, 1, 1]
    assert first.sampler_logprobs == [-0.3, -0.4, 0.0, 0.0, -0.5, 0.0, -1.0, -1.1]
    assert (second.prompt_ids, second.completion_ids, second.loss_mask) == ([1, 2, 7], [8, 12], [1, 1])
    assert first.num_turns == 3 and second.num_turns == 2
    assert all(ep.reward == 0.5 for ep in episodes)


def test_merge_rule_two_answers_to_one_prompt_are_two_trajectories() -> None:
    same = [Call([1, 2], [3], [-0.1], "stop"), Call([1, 2], [4], [-0.2], "stop")]
    episodes, stats = calls_to_episodes(same)
    assert stats.merged == 0 and [e.completion_ids for e in episodes] == [[3], [4]]
    assert all(math.isnan(e.reward) for e in episodes)


def test_episode_reward_forms() -> None:
    assert episode_reward(1, {}) == (1.0, {}, None)
    assert episode_reward({"a": 1.0, "b": 2}, {"b": 0.5}) == (2.0, {"a": 1.0, "b": 2.0}, None)
    assert math.isnan(episode_reward(None, {})[0])
    assert "not a finite number" in episode_reward("high", {})[2]
    assert episode_reward(True, {})[2] is not None and episode_reward(float("nan"), {})[2] is not None


# --- the endpoint with the openai client ----------------------------------------------------------


def test_chat_loop_through_the_openai_client_is_one_token_exact_trajectory(
    endpoint: Endpoint, engine: RecordingEngine
) -> None:
    key = endpoint.open_episode()
    client = client_for(endpoint, key)
    assert [m.id for m in client.models.list().data] == ["rlft"]
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Repeat 3."},
    ]
    for turn in range(3):
        reply = client.chat.completions.create(model="rlft", messages=messages, logprobs=True, max_tokens=6)
        choice = reply.choices[0]
        assert len(choice.logprobs.content) == reply.usage.completion_tokens <= 6
        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "user", "content": f"again {turn}"},
        ]
    calls = endpoint.close_episode(key)
    assert len(calls) == 3
    assert_recorded_is_sampled(calls, engine)
    episodes, stats = calls_to_episodes(calls, 1.0)
    assert (stats.merged, stats.trajectories) == (2, 1)
    (episode,) = episodes
    model_tokens = [t for t, m in zip(episode.completion_ids, episode.loss_mask, strict=True) if m]
    assert model_tokens == [t for call in calls for t in call.completion_ids]
    # The template's text between the turns (end of turn, the user message, the generation prompt)
    # is all that was tokenized; the model's own tokens are in the sequence as sampled.
    for prev, nxt in itertools.pairwise(calls):
        assert (
            nxt.prompt_ids[: len(prev.prompt_ids) + len(prev.completion_ids)]
            == prev.prompt_ids + prev.completion_ids
        )
    text = engine.tokenizer.decode(episode.prompt_ids + episode.completion_ids)
    assert "again 0" in text and "again 1" in text and text.count("<|im_start|>assistant") == 3


def test_a_rewritten_history_is_rendered_afresh_and_split(
    endpoint: Endpoint, engine: RecordingEngine
) -> None:
    key = endpoint.open_episode()
    client = client_for(endpoint, key)
    first = client.chat.completions.create(model="rlft", messages=[{"role": "user", "content": "Count."}])
    edited = {"role": "assistant", "content": first.choices[0].message.content + " (edited)"}
    client.chat.completions.create(
        model="rlft",
        messages=[{"role": "user", "content": "Count."}, edited, {"role": "user", "content": "more"}],
    )
    calls = endpoint.close_episode(key)
    _, stats = calls_to_episodes(calls)
    assert (stats.merged, stats.trajectories) == (0, 2)
    assert calls[1].prompt_ids == engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Count."}, edited, {"role": "user", "content": "more"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )


def test_completions_with_token_prompts_and_text_continue(
    endpoint: Endpoint, engine: RecordingEngine
) -> None:
    key = endpoint.open_episode()
    client = client_for(endpoint, key)
    first = client.completions.create(
        model="rlft", prompt="Count from 1:", max_tokens=4, extra_body={"return_token_ids": True}
    )
    ids = first.model_extra["prompt_token_ids"] + first.choices[0].model_extra["token_ids"]
    client.completions.create(model="rlft", prompt=ids + engine.tokenizer.encode(" next"), max_tokens=4)
    two = client.completions.create(model="rlft", prompt=["a", "b"], max_tokens=3, n=2)
    assert len(two.choices) == 4
    calls = endpoint.close_episode(key)
    assert_recorded_is_sampled(calls, engine)
    _, stats = calls_to_episodes(calls)
    assert stats.merged == 1 and stats.trajectories == 5


def test_requests_are_batched_into_engine_calls(endpoint: Endpoint, engine: RecordingEngine) -> None:
    keys = [endpoint.open_episode() for _ in range(6)]

    def ask(key: str) -> None:
        client_for(endpoint, key).chat.completions.create(
            model="rlft", messages=[{"role": "user", "content": "hi"}]
        )

    threads = [threading.Thread(target=ask, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(engine.batch_sizes) == 6 and len(engine.batch_sizes) < 6
    for key in keys:
        assert len(endpoint.close_episode(key)) == 1


def test_the_endpoint_refuses_what_it_must(endpoint: Endpoint) -> None:
    key = endpoint.open_episode()
    url = endpoint.base_url
    ok = {"model": "rlft", "messages": [{"role": "user", "content": "x"}]}

    def post(body: Any, api_key: str = key, path: str = "/chat/completions") -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(
            url + path, content=data, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )

    assert endpoint.cfg.host == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    assert post(ok, "wrong." + key.rpartition(".")[2]).status_code == 401
    assert httpx.get(url + "/models", timeout=30).status_code == 401  # no key at all
    assert post(b"x" * 30_000).status_code == 413
    assert post(b"{not json").status_code == 400
    assert post({**ok, "stream": True}).status_code == 400
    assert (
        post({"model": "rlft", "messages": [{"role": "user", "content": "word " * 500}]}).json()["error"][
            "type"
        ]
        == "context_length_exceeded"
    )
    assert post({"model": "rlft", "prompt": [10**9]}, path="/completions").status_code == 400
    statuses = [post(ok).status_code for _ in range(7)]
    # 6 requests per episode; the two refused after reading their body (context, prompt) count
    assert statuses.count(200) == 6 - 2 and statuses[-1] == 429
    endpoint.close_episode(key)
    assert post(ok).status_code == 403  # a closed episode's key no longer works


# --- the agent contract ------------------------------------------------------------------------------


def chat_agent(client: openai.OpenAI, row: dict[str, Any]) -> float:
    """A plain multi-call OpenAI-client agent: three turns, reward = digits in the last reply."""
    messages: list[Any] = [{"role": "user", "content": row["prompt"]}]
    for _ in range(3):
        reply = client.chat.completions.create(model="rlft", messages=messages).choices[0].message
        messages += [reply.model_dump(exclude_none=True), {"role": "user", "content": "Once more."}]
    return float(sum(ch.isdigit() for ch in reply.content or ""))


async def async_agent(client: openai.AsyncOpenAI, row: dict[str, Any]) -> dict[str, float]:
    reply = await client.chat.completions.create(
        model="rlft", messages=[{"role": "user", "content": row["prompt"]}]
    )
    return {"length": float(len(reply.choices[0].message.content or "")), "bonus": 1.0}


def test_agents_run_concurrently_and_failures_fail_only_their_episode(
    engine: RecordingEngine, tmp_path: Path
) -> None:
    agent_file = tmp_path / "agents.py"
    agent_file.write_text(
        "import time\n"
        "def boom(client, row):\n    raise ValueError('no luck')\n"
        "def slow(client, row):\n    time.sleep(5)\n"
        "def wrong(client, row):\n    return 'high'\n"
    )
    cfg = AgentConfig(timeout_s=120.0, max_concurrency=4, reward_weights={"bonus": 2.0})
    rows = [{"prompt": "Repeat 7."}, {"prompt": "Count."}]
    with Endpoint(engine, engine.tokenizer, SAMPLING, cfg) as ep:
        plain = run_agents(ep, chat_agent, rows, cfg)
        assert [r.outcome for r in plain] == ["done", "done"]
        assert all(r.merge.calls == 3 and r.merge.merged == 2 and len(r.episodes) == 1 for r in plain)
        named = run_agents(ep, async_agent, rows, cfg)
        assert (
            named[0].named_rewards["bonus"] == 1.0
            and named[0].reward == named[0].named_rewards["length"] + 2.0
        )
        for name, outcome in (("boom", "error"), ("slow", "timeout"), ("wrong", "error")):
            agent = load_agent(AgentConfig(path=f"{agent_file}:{name}"))
            (result,) = run_agents(ep, agent, rows[:1], AgentConfig(timeout_s=1.0))
            assert result.outcome == outcome and result.reward == cfg.failure_reward, result
        (dropped,) = run_agents(
            ep, load_agent(AgentConfig(path=f"{agent_file}:boom")), rows[:1], AgentConfig(failure_reward=None)
        )
        assert dropped.episodes == [] and "no luck" in dropped.error


def test_load_agent_errors_name_the_spec_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def one(client):\n    return 1\n")
    with pytest.raises(TypeError, match=r"cannot be called as run\(client, row\)"):
        load_agent(AgentConfig(path=f"{tmp_path / 'a.py'}:one"))
    with pytest.raises(AttributeError, match=r"agent spec .* has no function 'two'"):
        load_agent(AgentConfig(path=f"{tmp_path / 'a.py'}:two"))
    with pytest.raises(FileNotFoundError, match="agent spec"):
        load_agent(AgentConfig(path="missing.py:run"))
    with pytest.raises(ValueError, match="set only one of"):
        load_agent(AgentConfig(path="a.py:run", verifiers="b.py:env"))


# --- a real agent framework --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ToolCallingAgent", "CodeAgent"])
def test_smolagents_drives_episodes_token_exact(engine: RecordingEngine, kind: str) -> None:
    smolagents = pytest.importorskip("smolagents")

    @smolagents.tool
    def add(a: int, b: int) -> int:
        """Adds two numbers.

        Args:
            a: the first number
            b: the second number
        """
        return a + b

    def agent(client: openai.OpenAI, row: dict[str, Any]) -> float:
        model = smolagents.OpenAIServerModel(
            model_id="rlft", api_base=str(client.base_url), api_key=client.api_key
        )
        runner = getattr(smolagents, kind)(tools=[add], model=model, max_steps=2, verbosity_level=0)
        answer = runner.run(row["prompt"])
        return float(str(answer).strip() == "5")

    cfg = AgentConfig(max_concurrency=2, max_context_tokens=16_000)  # its system prompt is long
    engine.sampled.clear()
    with Endpoint(engine, engine.tokenizer, SAMPLING, cfg) as ep:
        results = run_agents(ep, agent, [{"prompt": "What is 2 + 3?"}] * 2, cfg)
    for result in results:
        assert result.outcome == "done", result.error
        assert result.merge.calls == len(result.calls) >= 2  # the steps, then the final-answer call
        assert_recorded_is_sampled(result.calls, engine)
        assert sum(e.num_turns for e in result.episodes) == len(result.calls)
        model_tokens = [
            t for e in result.episodes for t, m in zip(e.completion_ids, e.loss_mask, strict=True) if m
        ]
        assert sorted(model_tokens) == sorted(t for c in result.calls for t in c.completion_ids)
    assert sum(len(r.calls) for r in results) == len(engine.sampled)


# --- sampler vs learner log-probs on endpoint trajectories ----------------------------------------------


def rewriting_agent(client: openai.OpenAI, row: dict[str, Any]) -> float:
    """Three calls: a chat loop, then a call whose history was rewritten (a summary instead of
    the conversation), which the merge rule must not append to the first trajectory."""
    messages: list[Any] = [{"role": "user", "content": row["prompt"]}]
    for _ in range(2):
        reply = client.chat.completions.create(model="rlft", messages=messages).choices[0].message
        messages += [reply.model_dump(exclude_none=True), {"role": "user", "content": "Again."}]
    summary = [{"role": "user", "content": "Summary: you repeated it twice. Once more."}]
    client.chat.completions.create(model="rlft", messages=summary)
    return 1.0


def naive_merge(calls: list[Call]) -> Episode:
    """A broken merge rule: every call's tokens appended to the first call's, prefix or not."""
    ids, mask, logprobs = [], [], []
    for call in calls:
        known = len(calls[0].prompt_ids) + len(ids)
        delta = call.prompt_ids[known:] if call.prompt_ids[:known] == (calls[0].prompt_ids + ids) else []
        ids += delta + call.completion_ids
        mask += [0] * len(delta) + [1] * len(call.completion_ids)
        logprobs += [0.0] * len(delta) + call.sampler_logprobs
    return Episode(calls[0].prompt_ids, ids, mask, logprobs, reward=1.0)


def test_learner_logprobs_match_the_sampler_on_endpoint_trajectories(
    engine: RecordingEngine, tiny_model_dir: Path
) -> None:
    from rlft.config import AlgorithmConfig, LearnerConfig
    from rlft.learner.learner import Learner

    cfg = AgentConfig()
    rows = [{"prompt": f"Repeat this digit: {d}"} for d in "123"]
    with Endpoint(engine, engine.tokenizer, SAMPLING, cfg) as ep:
        results = run_agents(ep, rewriting_agent, rows, cfg)
    assert all(r.merge.calls == 3 and r.merge.merged == 1 and r.merge.trajectories == 2 for r in results)
    learner = Learner(
        ModelConfig(path=str(tiny_model_dir)), LearnerConfig(lr=0.0), AlgorithmConfig(), SAMPLING, seed=0
    )
    right = [e.to_sample(i) for i, r in enumerate(results) for e in r.episodes]
    wrong = [naive_merge(r.calls).to_sample(i) for i, r in enumerate(results)]
    # Template tokens between the calls trained as if sampled (the merge without its loss mask).
    unmasked = [replace(s, loss_mask=None) for s in right]
    good = learner.train_step(right)["logprob_diff/sampler"]
    bad = learner.train_step(wrong)["logprob_diff/sampler"]
    bad_mask = learner.train_step(unmasked)["logprob_diff/sampler"]
    print(f"logprob_diff/sampler: merge rule {good:.2e}, naive merge {bad:.3g}, no loss mask {bad_mask:.3g}")
    assert good < 1e-4, good
    # The tiny random model's logits depend little on context, so a wrong context moves them less
    # than wrong tokens do; still orders of magnitude above the engine/learner numerics.
    assert bad > 1e-3 and bad > 1000 * good, bad
    assert bad_mask > 0.5, bad_mask


class ScriptedEngine:
    """Answers every prompt with the tokens of one fixed reply (as if sampled, log-prob -1 each):
    the tiny random model never writes a tool call by itself."""

    def __init__(self, tokenizer: Any, reply: str):
        self.tokenizer = tokenizer
        self.ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> Any:
        from rlft.rollout.engine import Completion

        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return [
            [Completion(list(self.ids), [-1.0] * len(self.ids), text, "stop") for _ in range(n)]
            for _ in prompts
        ]


def test_tool_calls_come_back_in_openai_format_and_the_loop_stays_one_trajectory(
    engine: RecordingEngine,
) -> None:
    from rlft.envs.tools import hermes_tool_calls

    reply = 'Let me add.<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    scripted = ScriptedEngine(engine.tokenizer, reply)
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    sampling = SamplingConfig(max_new_tokens=256)
    with Endpoint(scripted, engine.tokenizer, sampling, AgentConfig(), tool_parser=hermes_tool_calls) as ep:
        key = ep.open_episode()
        client = client_for(ep, key)
        messages: list[Any] = [{"role": "user", "content": "2 + 3?"}]
        for _ in range(2):
            choice = client.chat.completions.create(model="rlft", messages=messages, tools=tools).choices[0]
            assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me add."
            (call,) = choice.message.tool_calls
            assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 2, "b": 3})
            messages += [
                choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "5"},
            ]
        plain = client.chat.completions.create(model="rlft", messages=[{"role": "user", "content": "hi"}])
        assert plain.choices[0].message.tool_calls is None  # no tools offered: the text as it is
        calls = ep.close_episode(key)
    episodes, stats = calls_to_episodes(calls)
    assert (stats.merged, stats.trajectories) == (1, 2)
    assert episodes[0].completion_ids[: len(scripted.ids)] == scripted.ids  # the sampled ids, as they were
