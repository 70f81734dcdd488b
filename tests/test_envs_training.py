"""Training on multi-turn episodes through the real CLI: every online algorithm, packing, LoRA,
async; metrics and samples.jsonl. The learning tests (tiny model) are slow-marked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rlft.cli import main
from rlft.tracking import read_metrics

SMALL = [
    "recipe=guess_digit",
    "cluster.mode=local",
    "data.global_prompts_per_step=2",
    "algorithm.group_size=2",
    "rollout.sampling.max_new_tokens=4",
    "trainer.max_steps=2",
    "tracking.console=false",
]


@pytest.fixture
def run(tiny_model_dir: Path, tmp_path: Path) -> Callable[..., list[dict]]:
    def train(*overrides: str) -> list[dict]:
        args = ["train", *SMALL, f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path}"]
        assert main([*args, "tracking.wandb.enabled=false", *overrides]) == 0
        return read_metrics(tmp_path / "metrics.jsonl")

    return train


@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo"])
def test_every_online_algorithm_trains_on_episodes(run: Callable[..., list[dict]], algorithm: str) -> None:
    overrides = [f"algorithm={algorithm}"]
    if algorithm == "dapo":  # its overlong shaping must stay below the turn length
        overrides += ["algorithm.overlong_buffer_len=2"]
    metrics = run(*overrides)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        # PPO takes 4 optimizer steps per rollout: the later ones score with updated weights.
        assert m["logprob_diff/sampler"] < (1.0 if algorithm == "ppo" else 1e-4), m["logprob_diff/sampler"]
        assert {"env/turns_mean", "env/solved", "env/step_s_mean", "env/truncated_frac"} <= m.keys()
    if algorithm == "ppo":
        assert "loss/value" in metrics[-1]


def test_packing_lora_and_async_train_on_episodes(run: Callable[..., list[dict]], tmp_path: Path) -> None:
    metrics = run("learner.packing=true", "model.lora.rank=4", "learner.lr=1e-2", "trainer.async=true")
    assert len(metrics) == 2 and metrics[0]["logprob_diff/sampler"] < 1e-3  # step 2's may be stale
    assert max(m["async/staleness_max"] for m in metrics) <= 1
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert rows and {"messages", "reward", "num_turns", "finish_reason", "turn_rewards"} <= rows[0].keys()
    assert rows[0]["messages"][0] == {"role": "user", "content": "Guess my digit (0-9)."}
    assert rows[0]["messages"][1]["role"] == "assistant"


def test_tool_env_trains_with_reward_functions(run: Callable[..., list[dict]], tmp_path: Path) -> None:
    """The tool environment with a file tool and the arithmetic task's reward function on the final answer."""
    metrics = run(
        "env.path=tools",
        "~env.params.feedback",  # the recipe's GuessEnv parameters
        "~env.params.partial_credit",
        "env.tools=[python,tests/test_envs.py:add]",
        "env.max_episode_tokens=256",
        "data.path=builtin:arithmetic",
        "reward.functions=[rewards/math_answer.py:math_answer]",
        "model.max_prompt_tokens=64",
    )
    assert "reward/math_answer/mean" in metrics[-1] and "env/turns_mean" in metrics[-1]
