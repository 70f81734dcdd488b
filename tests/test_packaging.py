"""The shipped conf/, recipes/, rewards/ and envs/: resolved from any directory, carried by the wheel,
listed by `rlft recipes` and copied by `rlft init`; a user's own files win over the shipped ones."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rlft.cli import ConfigError, load_config, main
from rlft.rewards.loader import load_reward_function
from rlft.shipped import SHIPPED_ROOT
from rlft.trainers.online import PROJECT_ROOT

REPO = Path(__file__).resolve().parents[1]
SHIPPED_DIRS = ("conf", "recipes", "rewards", "envs")


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """An empty working directory outside the checkout."""
    assert not tmp_path.is_relative_to(REPO)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_recipe_and_reward_resolve_outside_the_checkout(outside):
    cfg = load_config(["recipe=grpo_gsm8k"])
    assert cfg.reward.functions == ["rewards/gsm8k.py:gsm8k"]
    fn = load_reward_function(cfg.reward.functions[0], search_dirs=[PROJECT_ROOT])
    assert Path(fn.source.rpartition(":")[0]) == (REPO / "rewards" / "gsm8k.py").resolve()
    assert fn(["q"], ["so the answer is 42"], {"answer": ["#### 42"]}) == [1.0]


def test_users_files_win_over_the_shipped_ones(outside):
    (outside / "rewards").mkdir()
    (outside / "rewards" / "gsm8k.py").write_text("def gsm8k(prompt, completion):\n    return 0.25\n")
    fn = load_reward_function("rewards/gsm8k.py:gsm8k", search_dirs=[PROJECT_ROOT])
    assert fn(["q"], ["42"], {}) == [0.25]
    (outside / "recipes").mkdir()
    shipped = (SHIPPED_ROOT / "recipes" / "quickstart.yaml").read_text()
    (outside / "recipes" / "quickstart.yaml").write_text(shipped.replace("max_steps: 200", "max_steps: 7"))
    (outside / "recipes" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 3\n")
    assert load_config(["recipe=quickstart"]).trainer.max_steps == 7
    assert load_config(["recipe=mine"]).trainer.max_steps == 3
    assert load_config(["recipe=grpo_gsm8k"]).model.path == "deepseek-ai/deepseek-math-7b-instruct"


def test_missing_files_name_both_places_looked(outside):
    with pytest.raises(FileNotFoundError) as err:
        load_reward_function("rewards/nope.py:f", search_dirs=[PROJECT_ROOT])
    assert str(outside / "rewards" / "nope.py") in str(err.value)
    assert str(SHIPPED_ROOT / "rewards" / "nope.py") in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(["recipe=nope"])
    assert str(outside / "recipes" / "nope.yaml") in str(err.value)
    assert str(SHIPPED_ROOT / "conf" / "recipe" / "nope.yaml") in str(err.value)


def test_rlft_recipes_lists_each_recipe_with_its_header_line(outside, capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for path in (REPO / "recipes").glob("*.yaml"):
        header = next(line for line in path.read_text().splitlines() if not line.startswith("# @"))
        (row,) = [line for line in lines if line.split(" ")[0] == path.stem]
        assert header.lstrip("# ") in row


def test_rlft_init_copies_a_recipe_and_its_reward_file(outside, capsys):
    assert main(["init", "grpo_gsm8k"]) == 0
    for rel, shipped in [("recipes/grpo_gsm8k.yaml", "recipes/grpo_gsm8k.yaml"), ("rewards/gsm8k.py",) * 2]:
        assert (outside / rel).read_text() == (REPO / shipped).read_text()
    assert main(["init", "grpo_gsm8k"]) == 2  # nothing is overwritten without --force
    assert "--force" in capsys.readouterr().err
    recipe = outside / "recipes" / "grpo_gsm8k.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps: 500", "max_steps: 5"))
    assert load_config(["recipe=grpo_gsm8k"]).trainer.max_steps == 5
    assert main(["init", "grpo_gsm8k", "--force"]) == 0
    assert load_config(["recipe=grpo_gsm8k"]).trainer.max_steps == 500


def _shipped_files() -> dict[str, bytes]:
    """Every file the checkout's shipped folders hold (through symlinks), by its path in the wheel."""
    files = {}
    for name in SHIPPED_DIRS:
        for folder, dirs, names in os.walk(REPO / name, followlinks=True):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for file in names:
                path = Path(folder) / file
                files[f"rlft/_shipped/{path.relative_to(REPO)}"] = path.read_bytes()
    return files


def test_the_wheel_built_from_the_sdist_carries_every_shipped_file(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rlft-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        carried = {name: archive.read(name) for name in archive.namelist() if "/_shipped/" in name}
    expected = _shipped_files()
    assert "rlft/_shipped/conf/recipe/quickstart.yaml" in expected
    assert carried == expected
