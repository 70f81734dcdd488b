"""Losses and advantage estimators from a user's file (``algorithm.policy_loss=my_loss.py:fn``),
loaded with the reward functions' loader and its errors; registry traits, asked by validation."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlft.algorithms import (
    ADVANTAGE_ESTIMATORS,
    PREFERENCE_LOSSES,
    AdvantageInput,
    AdvantageTraits,
    get_advantage,
    get_policy_loss,
    ppo_clip_loss,
)
from rlft.cli import ConfigError, load_config, main
from rlft.config import AlgorithmConfig
from rlft.tracking import read_metrics

# A policy loss of a user's: the unclipped importance-weighted policy gradient, -ratio * A.
USER_LOSS = """
import torch


def weighted_pg(logprobs, old_logprobs, advantages, mask, cfg):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old_logprobs, 0.0))
    return torch.where(mask.bool(), -ratio * advantages, 0.0), {"ratio": ratio.detach()}


def two_args(logprobs, mask):
    return logprobs
"""

USER_ADVANTAGE = """
from rlft.algorithms import AdvantageTraits, grpo_advantages


def centred(data, cfg):
    return grpo_advantages(data, cfg)


centred.traits = AdvantageTraits(min_group_size=3)
"""


def _write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_a_loss_from_a_file_is_the_function_in_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "my_loss.py", USER_LOSS)
    monkeypatch.chdir(tmp_path)
    fn = get_policy_loss("my_loss.py:weighted_pg")
    assert fn.__name__ == "weighted_pg" and get_policy_loss("my_loss.py:weighted_pg") is fn  # loaded once
    lp, old = torch.tensor([[-1.0, -2.0]], requires_grad=True), torch.tensor([[-1.0, -1.5]])
    adv, mask = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    ours, _ = ppo_clip_loss(lp, old, adv, mask, AlgorithmConfig())
    theirs, _ = fn(lp, old, adv, mask, AlgorithmConfig())
    assert torch.equal(ours, theirs)  # ratio 1 on the unmasked token: no clipping either way


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("nope.py:f", FileNotFoundError, r"algorithm.policy_loss spec 'nope.py:f': file 'nope.py' not found"),
        (
            "my_loss.py:missing",
            AttributeError,
            r"has no function 'missing'; its callables are: two_args, weighted_pg",
        ),
        (
            "my_loss.py:two_args",
            TypeError,
            r"cannot be called as fn\(logprobs, old_logprobs, advantages, mask, cfg\)",
        ),
        (
            "ppo_clipp",
            ValueError,
            r"unknown algorithm.policy_loss 'ppo_clipp'; known: .* path/to/file.py:function",
        ),
    ],
)
def test_bad_specs_fail_naming_the_key_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, error: type, message: str
) -> None:
    _write(tmp_path, "my_loss.py", USER_LOSS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        get_policy_loss(spec)


def test_bad_spec_is_a_config_error_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", "cluster.mode=local", f"algorithm.policy_loss={tmp_path}/none.py:f"]) == 2
    err = capsys.readouterr().err
    assert "rlft: config error: algorithm.policy_loss spec" in err and "not found" in err


def test_traits_are_what_validation_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ADVANTAGE_ESTIMATORS.traits("gae").needs_critic
    assert ADVANTAGE_ESTIMATORS.traits("rloo").min_group_size == 2
    assert not ADVANTAGE_ESTIMATORS.traits("grpo").takes_token_rewards
    assert ADVANTAGE_ESTIMATORS.traits("reverse_kl").needs_teacher
    assert ADVANTAGE_ESTIMATORS.traits("reinforce_pp") == AdvantageTraits()
    assert {n for n in PREFERENCE_LOSSES if PREFERENCE_LOSSES.traits(n).reference_free} == {"simpo", "orpo"}
    assert {n for n in PREFERENCE_LOSSES if PREFERENCE_LOSSES.traits(n).unpaired} == {"kto"}
    with pytest.raises(
        ConfigError, match=r"algorithm\.group_size must be >= 2 for algorithm\.advantage=rloo"
    ):
        load_config(["algorithm=rloo", "algorithm.group_size=1"])
    with pytest.raises(ConfigError, match=r"algorithm\.advantage=dr_grpo takes the KL as a loss term"):
        load_config(["algorithm=dr_grpo", "algorithm.kl.in_reward=true"])
    # a user's estimator declares its traits on the function
    path = _write(tmp_path, "my_adv.py", USER_ADVANTAGE)
    spec = f"{path}:centred"
    assert ADVANTAGE_ESTIMATORS.traits(spec) == AdvantageTraits(min_group_size=3)
    with pytest.raises(
        ConfigError, match=f"algorithm.group_size must be >= 3 for algorithm.advantage={spec}"
    ):
        load_config([f"algorithm.advantage={spec}", "algorithm.group_size=2"])
    data = AdvantageInput(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 0]), torch.ones(3, 2))
    ours, _ = get_advantage("grpo")(data, AlgorithmConfig())
    assert torch.equal(get_advantage(spec)(data, AlgorithmConfig())[0], ours)


def test_relative_paths_are_made_absolute_in_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learners in other processes (or a resumed run started elsewhere) load the same file."""
    _write(tmp_path, "my_loss.py", USER_LOSS)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["algorithm.policy_loss=my_loss.py:weighted_pg"])
    assert cfg.algorithm.policy_loss == f"{tmp_path / 'my_loss.py'}:weighted_pg"
    assert cfg.algorithm.advantage == "grpo"


def _readme_example() -> str:
    """The worked example of README's "Write your own loss" (the code block of ``my_loss.py``)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return readme.split("```python\n# my_loss.py\n", 1)[1].split("```", 1)[0]


def test_a_loss_from_a_user_file_trains_the_quickstart(
    quickstart_args: Callable[..., list[str]], tmp_path: Path
) -> None:
    """The quickstart with the README's example loss, loaded from a file of the user's, learns to
    copy the digit: the e2e margin (first-5 mean reward < 0.02, last-5 > first + 0.3)."""
    path = _write(tmp_path, "my_loss.py", _readme_example())
    out = tmp_path / "run"
    args = quickstart_args(
        out, "cluster.mode=local", "trainer.max_steps=150", f"algorithm.policy_loss={path}:thresholded_pg"
    )
    assert main(args) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    first = sum(m["reward/mean"] for m in metrics[:5]) / 5
    last = sum(m["reward/mean"] for m in metrics[-5:]) / 5
    assert first < 0.02 and last > first + 0.3, (first, last)


def test_engines_and_transports_are_registries(tmp_path: Path) -> None:
    """rollout.engine names a registered factory or a user's engine class by path; an engine whose
    constructor cannot take (model_cfg, rollout_cfg) fails naming the key."""
    from rlft.rollout.worker import ENGINES, make_engine
    from rlft.weights import TRANSPORTS, ObjectStoreTransport, make_transport

    assert sorted(ENGINES) == ["hf", "vllm"] and sorted(TRANSPORTS) == [
        "collective",
        "cuda_ipc",
        "object_store",
    ]
    assert isinstance(make_transport("object_store", 1.0), ObjectStoreTransport)
    with pytest.raises(ValueError, match=r"unknown weights\.transport 'nccl'; known: collective, cuda_ipc"):
        make_transport("nccl")
    path = _write(
        tmp_path,
        "my_engine.py",
        """
        class Echo:
            def __init__(self, model_cfg, rollout_cfg):
                self.max_new_tokens = rollout_cfg.sampling.max_new_tokens


        class NoArgs:
            pass
        """,
    )
    from rlft.config import ModelConfig, RolloutConfig

    engine = make_engine(ModelConfig(), RolloutConfig(engine=f"{path}:Echo"))
    assert type(engine).__name__ == "Echo" and engine.max_new_tokens == 32
    with pytest.raises(
        ConfigError, match=r"rollout\.engine spec .*cannot be called as fn\(model_cfg, rollout_cfg\)"
    ):
        load_config([f"rollout.engine={path}:NoArgs"])


def test_train_help_lists_each_key_with_type_value_and_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "algorithm=rloo", "--help", "algorithm.kl"]) == 0
    out = capsys.readouterr().out
    assert "usage: rlft train" in out
    assert "algorithm.kl.estimator: str = 'k1'" in out  # the value the overrides compose (rloo: k1)
    assert "KL estimator between policy and reference" in out and "algorithm.beta" not in out
    assert main(["train", "--help", "trainer"]) == 0
    out = capsys.readouterr().out
    assert "trainer.async: bool = False" in out and "trainer.max_steps: int = 100" in out
    assert main(["train", "--help"]) == 0
    assert "config groups: model, algorithm" in capsys.readouterr().out
    assert main(["train", "--help", "algorithmz"]) == 2
