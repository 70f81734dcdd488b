"""The board's figures (shared with ``rlft plot``) and its launch form's schema, without a browser."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

if not os.environ.get("CI"):  # CI installs rlft[board] (.ci/run)
    pytest.importorskip("plotly")
    pytest.importorskip("dash")

from rlft.board import plots, schema
from rlft.cli import main


def test_smoothing_is_a_bias_corrected_ema_that_skips_missing_values() -> None:
    assert plots.smooth([1.0, 2.0], 0.0) == [1.0, 2.0]
    # EMA with weight w = 0.5: a1 = 0.5, n1 = 0.5 -> 1; a2 = 0.25 + 1.5 = 1.75 / 0.75
    out = plots.smooth([1.0, None, 3.0, float("nan")], 0.5)
    assert out[0] == pytest.approx(1.0) and out[1] is None and out[3] is None
    assert out[2] == pytest.approx((0.5 * 0.5 * 1 + 0.5 * 3) / (0.5 * 0.5 + 0.5))


def test_timing_parts_sum_to_the_step_and_scale_overlapped_rollouts() -> None:
    sync_row = {
        "timing/step_s": 10.0,
        "timing/rollout_s": 4.0,
        "timing/reward_s": 1.0,
        "timing/rollout_wait_s": 5.0,
        "timing/train_s": 3.0,
        "timing/weight_sync_s": 0.5,
    }
    parts = plots.timing_parts(sync_row)
    assert parts == pytest.approx(
        {"rollout": 4, "reward": 1, "train": 3, "sync": 0.5, "eval": 0, "idle": 1.5}
    )
    async_row = {**sync_row, "timing/rollout_wait_s": 2.5}  # half of it overlapped training
    parts = plots.timing_parts(async_row)
    assert (parts["rollout"], parts["reward"]) == pytest.approx((2.0, 0.5))
    assert sum(parts.values()) == pytest.approx(10.0)


def test_token_colours_diverge_about_zero_for_the_advantage() -> None:
    low, zero, high = plots.token_colours([-2.0, 0.0, 1.0], "advantage")
    assert zero == plots.token_colours([0.0], "advantage")[0]  # the scale's middle, whatever the span
    assert len({low, zero, high}) == 3
    stats = {"learner_logprob": [-1.0, -2.0], "sampler_logprob": [-1.5, -2.0]}
    assert plots.token_values(stats, "gap") == [0.5, 0.0]


def test_curves_figure_overlays_runs_in_one_colour_per_run() -> None:
    rows = [{"step": s, "reward/mean": s / 10, "kl": 0.1, "timing/step_s": 2.0} for s in range(1, 4)]
    fig = plots.curves_figure({"a": rows, "b": rows[:2]}, ["reward/mean", "kl"], x="time")
    named = [(t.name, t.line.color, list(t.x)) for t in fig.data]
    assert named[0] == ("a", named[1][1], [2.0, 4.0, 6.0])  # a's two panels share a colour
    assert {n for n, _, _ in named} == {"a", "b"} and named[2][1] != named[0][1]


def test_form_fields_carry_type_docstring_and_the_recipes_value() -> None:
    fields = {f.key: f for f in schema.form_fields("quickstart")}
    steps = fields["trainer.max_steps"]
    assert (steps.type, steps.value) == ("int", "200")  # recipes/quickstart.yaml
    assert steps.doc.startswith("Number of RL steps")
    assert fields["learner.betas"].value == "[0.9,0.999]"
    assert "trainer.output_dir" not in fields  # the board sets it
    assert set(fields) >= {"tracking.token_stats", "algorithm.kl.estimator", "trainer.async"}


def test_the_form_check_is_the_cli_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for bad in ("trainer.max_steps=3x", "trainer.max_stepz=3", "algorithm.group_size=1"):
        assert main(["train", "recipe=quickstart", bad]) == 2
        cli = capsys.readouterr().err.strip()
        assert schema.check(["recipe=quickstart", bad]) == cli
    args = schema.overrides("quickstart", {"trainer.max_steps": "3"}, " cluster.mode=local ", str(tmp_path))
    assert args == [
        "recipe=quickstart",
        "trainer.max_steps=3",
        "cluster.mode=local",
        f"trainer.output_dir={tmp_path}",
    ]
    assert schema.check(args) is None


def test_rlft_plot_writes_the_boards_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"step": s, "reward/mean": math.sin(s), "timing/step_s": 1.0, "timing/train_s": 0.5}
        for s in range(1, 6)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "fig.html"
    assert main(["plot", str(run), "--metrics", "reward/mean", "--smoothing", "0.5", "--out", str(out)]) == 0
    assert out.stat().st_size > 100_000 and "cdn" not in out.read_text()[:2000].lower()  # plotly.js inlined
    assert main(["plot", str(run), "--metrics", "nope", "--out", str(out)]) == 2
    assert "no run logged ['nope']" in capsys.readouterr().err
    assert main(["plot", str(run), "--timing", "--out", str(tmp_path / "t.html")]) == 0


def test_an_episode_is_shown_message_by_message_with_its_tool_calls() -> None:
    from rlft.board.app import _sample_card

    row = {
        "step": 3,
        "reward": 1.0,
        "num_turns": 2,
        "turn_rewards": [0.0, None],
        "messages": [
            {"role": "user", "content": "Guess my digit"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "guess", "arguments": '{"digit": 4}'}}
                ],
            },
            {"role": "tool", "name": "guess", "content": "higher"},
            {"role": "assistant", "content": [{"type": "text", "text": "7"}]},
        ],
    }
    card = json.dumps(_sample_card(row, "advantage").to_plotly_json(), default=lambda c: c.to_plotly_json())
    assert [f"role-{r}" in card for r in ("user", "assistant", "tool")] == [True] * 3
    assert 'guess({\\"digit\\": 4})' in card and "higher" in card and "2 turns" in card
    assert "turn rewards 0, -" in card


def test_thinning_keeps_each_stretchs_lowest_and_highest_point() -> None:
    import numpy as np

    xs = np.arange(1, 10_001, dtype=float)
    ys = np.zeros(10_000)
    ys[4321], ys[777] = 5.0, -3.0  # spikes survive
    out = plots.thin(xs, ys, 200)
    assert len(out["x"]) <= 200 and list(out["x"]) == sorted(out["x"])
    assert {4322.0, 778.0} <= set(out["x"]) and out["y"].max() == 5.0 and out["y"].min() == -3.0
    small = plots.thin(xs[:50], ys[:50], 200)
    assert list(small["x"]) == list(xs[:50])


def test_timing_figure_averages_stretches_of_steps_when_thinned() -> None:
    rows = [{"step": s, "timing/step_s": float(s % 2 + 1), "timing/train_s": 1.0} for s in range(1, 101)]
    fig = plots.timing_figure("r", rows, max_points=10)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["train"].x) == [10.0 * k for k in range(1, 11)]
    assert list(by_name["idle"].y) == pytest.approx([0.5] * 10)  # steps alternate 0 and 1 s idle
