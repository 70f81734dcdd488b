"""Every paper recipe in recipes/ composes with Hydra and validates, and runs 2 steps on the tiny
model with small local data in the layout of the recipe's real dataset (its column mapping,
prompt template and reward functions unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlft.cli import load_config, main
from rlft.tracking import read_metrics

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"

_CONVERSATION = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}]
_REJECTED = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "No."}]
LAYOUTS: dict[str, list[dict]] = {
    # the hub layouts (before any data.columns renaming) of each recipe's dataset
    "gsm8k": [
        {"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i} + 2\n#### {i + 2}"}
        for i in range(8)
    ],
    "countdown": [{"target": 10 + i, "nums": [i + 1, 9, 1]} for i in range(8)],
    "math": [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)],
    "tldr": [
        {"query": f"SUBREDDIT: r/test\n\nTITLE: Post {i}\n\nPOST: Something happened.\n\nTL;DR:"}
        for i in range(8)
    ],
    "prompt_collection": [
        {"context_messages": [{"role": "user", "content": f"Tell me a fact about {i}."}]} for i in range(8)
    ],
    "ultrafeedback": [{"prompt": "Say hi", "chosen": _CONVERSATION, "rejected": _REJECTED} for _ in range(8)],
}
RECIPES: dict[str, tuple[str, list[str]]] = {
    # recipe: (data layout, overrides that shrink it beyond the common ones)
    "grpo_gsm8k": ("gsm8k", []),
    "r1_zero_countdown": ("countdown", []),
    "dapo_math": ("math", ["algorithm.overlong_buffer_len=4", "algorithm.dynamic_sampling.max_rounds=2"]),
    "dr_grpo_math": ("math", []),
    "gspo_math": ("math", []),
    "ppo_tldr": ("tldr", ["algorithm.epochs_per_step=2"]),
    "rloo_tldr": ("tldr", []),
    "reinforce_pp_rlhf": ("prompt_collection", []),
    "dpo_zephyr": ("ultrafeedback", []),
    "ipo_zephyr": ("ultrafeedback", []),
    "simpo_llama3": ("ultrafeedback", []),
    "kto_zephyr": ("ultrafeedback", []),
    "orpo_mistral": ("ultrafeedback", []),
}
PAPER_RECIPES = sorted(RECIPES)


def test_every_recipe_is_listed_here_and_in_the_readme() -> None:
    on_disk = {p.stem for p in RECIPES_DIR.glob("*.yaml")}
    assert on_disk - {
        "quickstart",
        "dpo_quickstart",
        "opd_quickstart",
        "smollm2_arithmetic",
        "guess_digit",
        "agent_quickstart",
    } == set(RECIPES)
    readme = (RECIPES_DIR / "README.md").read_text()
    for name in on_disk:
        assert f"`{name}`" in readme, f"recipes/README.md has no row for {name}"


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_composes_and_names_a_real_model(name: str) -> None:
    cfg = load_config([f"recipe={name}"])
    assert "/" in cfg.model.path, "a paper recipe names its model by hub id"
    assert cfg.data.path and not cfg.data.path.startswith("builtin:")
    header = (RECIPES_DIR / f"{name}.yaml").read_text().split("defaults:")[0]
    assert "arXiv" in header or "github.com" in header, "the recipe cites its source"


def _smoke_overrides(name: str, tiny_model_dir: Path, tmp_path: Path) -> list[str]:
    layout, extra = RECIPES[name]
    data = tmp_path / f"{layout}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in LAYOUTS[layout]))
    cfg = load_config([f"recipe={name}"])
    overrides = [
        f"recipe={name}",
        f"model.path={tiny_model_dir}",
        "model.tokenizer_path=null",
        "model.critic_path=null",
        "model.dtype=float32",
        "model.max_prompt_tokens=400",
        f"data.path={data}",
        "data.subset=null",
        "data.split=train",
        "data.eval_split=null",
        "data.eval_path=null",
        "data.global_prompts_per_step=2",
        "rollout.engine=hf",
        "rollout.sampling.max_new_tokens=8",
        "learner.global_samples_per_optimizer_step=0",
        "learner.per_device_samples_per_micro_batch=8",
        "learner.gradient_checkpointing=false",
        "learner.mixed_precision=no",
        "eval.every_steps=0",
        "cluster.mode=local",
        "trainer.max_steps=2",
        f"trainer.output_dir={tmp_path / 'run'}",
        "tracking.wandb.enabled=false",
        "tracking.console=false",
        *extra,
    ]
    if cfg.algorithm.kind == "online" and cfg.algorithm.group_size > 1:
        overrides.append("algorithm.group_size=2")
    if cfg.reward.model.path is not None:
        overrides.append(f"reward.model.path={tiny_model_dir}")
    return overrides


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_runs_two_steps_on_the_tiny_model(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = _smoke_overrides(name, tiny_model_dir, tmp_path)
    cfg = load_config(overrides)
    assert cfg.data.columns == load_config([f"recipe={name}"]).data.columns  # the recipe's mapping is kept
    assert main(["train", *overrides]) == 0
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[-1]["data/filtered_too_long"] == 0
    if cfg.algorithm.kind == "online":
        assert all(m["reward/mean"] == m["reward/mean"] for m in metrics)  # scored (not NaN)
        prompt = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])["prompt"]
        if cfg.data.prompt_template is not None:  # the template was filled from the row's columns
            assert prompt.startswith(cfg.data.prompt_template.split("{")[0]) and "{" not in prompt[:40]
    else:
        assert all(m["loss"] == m["loss"] for m in metrics)
