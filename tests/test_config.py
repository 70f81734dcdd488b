"""Config composition and validation: bad keys and types fail at start, naming the key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlft.cli import ConfigError, load_config, load_run_config, main

RECIPES = sorted(p.stem for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_defaults_compose() -> None:
    cfg = load_config([])
    assert cfg.model.path == "tiny"
    assert cfg.algorithm.advantage == "grpo"
    assert cfg.reward.functions == ["rewards/synthetic.py:repeat_char"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes(recipe: str) -> None:
    cfg = load_config([f"recipe={recipe}"])
    assert cfg.trainer.max_steps >= 1


def test_command_line_contract_keys() -> None:
    cfg = load_config(
        [
            "recipe=quickstart",
            "model=tiny",
            "reward.functions=[rewards/synthetic.py:repeat_char,rewards/synthetic.py:repeat_char]",
            "reward.weights=[1.0,0.2]",
            "rollout.engine=hf",
            "cluster.mode=local",
            "algorithm.group_size=4",
            "algorithm.beta=0.1",
            "trainer.max_steps=3",
            "trainer.seed=7",
            "trainer.output_dir=/tmp/somewhere",
        ]
    )
    assert cfg.reward.weights == [1.0, 0.2]
    assert (cfg.cluster.mode, cfg.algorithm.group_size, cfg.algorithm.beta) == ("local", 4, 0.1)
    assert (cfg.trainer.max_steps, cfg.trainer.seed, cfg.trainer.output_dir) == (3, 7, "/tmp/somewhere")


def test_recipe_values_override_defaults_and_cli_overrides_recipe() -> None:
    assert load_config(["recipe=quickstart"]).learner.lr == pytest.approx(3e-3)
    assert load_config(["recipe=quickstart", "learner.lr=0.5"]).learner.lr == 0.5


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.max_stepz=3", "max_stepz"),
        ("algorithm.foo=1", "algorithm.foo"),
        ("+algorithm.foo=1", "algorithm.foo"),
        ("+typo_group=1", "typo_group"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("algorithm.beta=[1,2]", "algorithm.beta"),
        ("recipe=no_such_recipe", "no_such_recipe"),
        ("algorithm.group_size=1", "algorithm.group_size"),
        ("reward.weights=[1.0,2.0]", "reward.weights"),
        ("algorithm.kl.in_reward=true", "algorithm.kl.in_reward"),
        ("algorithm.policy_loss=ppo_clipp", "algorithm.policy_loss"),
        ("algorithm.advantage=grpoo", "algorithm.advantage"),
        ("model.dtype=float64", "model.dtype"),
        ("rollout.engine=vlm", "rollout.engine"),
        ("trainer.async=maybe", "trainer.async"),
    ],
)
def test_bad_config_fails_naming_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config([override])


def test_cli_exits_2_on_bad_key_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "trainer.max_stepz=3"]) == 2
    assert "max_stepz" in capsys.readouterr().err


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "recipe=quickstart", "trainer.seed=3", "--print-config"]) == 0
    assert "seed: 3" in capsys.readouterr().out


def test_trainer_async_key_and_replace_keeps_it(tmp_path: Path) -> None:
    """``async`` is a Python keyword, yet the key is ``trainer.async`` on the command line and in a
    run's config.yaml, and dataclasses.replace() keeps it like any other field."""
    assert not load_config([]).trainer.asynchronous
    cfg = load_config(["trainer.async=true"])
    assert cfg.trainer.asynchronous
    kept = replace(cfg.trainer, max_steps=3)
    assert (kept.asynchronous, kept.max_steps, kept.seed) == (True, 3, cfg.trainer.seed)
    assert not replace(cfg.trainer, **{"async": False}).asynchronous
    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    assert "  async: true\n" in saved.read_text()
    assert load_run_config(saved, []).trainer.asynchronous
    assert not load_run_config(saved, ["trainer.async=false"]).trainer.asynchronous


@pytest.mark.parametrize("override", ["cluster.colocate=true", "reward.model.path=/some/rm"])
def test_preference_run_rejects_online_only_keys(override: str) -> None:
    """A preference run starts no rollout workers or reward model: their keys are errors, not ignored."""
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(["recipe=dpo_quickstart", override])
