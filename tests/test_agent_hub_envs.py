"""verifiers and openenv-core environments run as rlft agents through the endpoint: the
environments are defined in tests/hub_envs (no hub, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlft.config import AgentConfig, ModelConfig, SamplingConfig
from rlft.envs.tools import hermes_tool_calls
from rlft.rollout.agents import load_agent, run_agents
from rlft.rollout.endpoint import Endpoint
from rlft.rollout.hf_engine import HFEngine

HERE = Path(__file__).parent / "hub_envs"
ROWS = [{"prompt": f"Repeat this letter: {c}", "answer": c} for c in "es"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> HFEngine:
    return HFEngine(ModelConfig(path=str(tiny_model_dir)))


def run(engine: HFEngine, cfg: AgentConfig) -> list:
    agent = load_agent(cfg, [HERE])
    sampling = SamplingConfig(max_new_tokens=8)
    with Endpoint(engine, engine.tokenizer, sampling, cfg, tool_parser=hermes_tool_calls) as endpoint:
        return run_agents(endpoint, agent, ROWS, cfg)


def letter_share(text: str, letter: str) -> float:
    return sum(c == letter for c in text) / len(text) if text else 0.0


@pytest.mark.parametrize(("env", "calls"), [("single_turn", 1), ("multi_turn", 3), ("with_tools", 1)])
def test_verifiers_environments_run_through_the_endpoint(engine: HFEngine, env: str, calls: int) -> None:
    pytest.importorskip("verifiers")
    results = run(engine, AgentConfig(verifiers=f"verifiers_envs.py:{env}"))
    for row, result in zip(ROWS, results, strict=True):
        assert result.outcome == "done", result.error
        assert len(result.calls) == calls  # ToolEnv: the tiny model calls no tool, so one reply ends it
        # The rubric's reward is the share of the letter in what the model said (recomputed here).
        said = "".join(c.text for c in result.calls)
        assert result.reward == pytest.approx(letter_share(said, row["answer"]), abs=1e-6)
        # verifiers' multi-turn loop sends the conversation back as it was: one trajectory.
        assert result.merge.trajectories == 1 and result.merge.merged == calls - 1


def test_openenv_environment_runs_through_the_endpoint(engine: HFEngine) -> None:
    pytest.importorskip("openenv.core")
    results = run(engine, AgentConfig(openenv="openenv_envs.py:LetterEnv", max_turns=4))
    for row, result in zip(ROWS, results, strict=True):
        assert result.outcome == "done", result.error
        assert len(result.calls) == 2  # the environment is done after two replies
        assert result.reward == pytest.approx(sum(letter_share(c.text, row["answer"]) for c in result.calls))
        assert result.merge.trajectories == 1


def test_hub_environment_specs_fail_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def not_an_env():\n    return 3\n")
    with pytest.raises(TypeError, match="not a verifiers Environment"):
        load_agent(AgentConfig(verifiers=f"{tmp_path / 'bad.py'}:not_an_env"))
    with pytest.raises(TypeError, match=r"not an openenv\.core Environment"):
        load_agent(AgentConfig(openenv=f"{tmp_path / 'bad.py'}:not_an_env"))
