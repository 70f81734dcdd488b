"""Reward functions: loading by path or module, calling conventions, and the manager's contract."""

import logging
import math
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rlft.rewards import RewardFunction, RewardManager, load_reward_function

PROMPTS = ["p0", "p1", "p2"]
COMPLETIONS = ["a", "bb", "ccc"]


def write(path: Path, source: str) -> Path:
    """Write a reward file (creating its directory) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def load(tmp_path: Path, source: str, name: str = "f") -> RewardFunction:
    """Load function ``name`` from a file holding ``source``."""
    return load_reward_function(f"{write(tmp_path / 'rewards.py', source)}:{name}")


def manager(tmp_path: Path, source: str, names: list[str], **kwargs) -> RewardManager:
    """A RewardManager over functions ``names`` of a file holding ``source``."""
    path = write(tmp_path / "rewards.py", source)
    return RewardManager([f"{path}:{name}" for name in names], **kwargs)


# --- loading ---------------------------------------------------------------------------------------


def test_relative_path_tries_cwd_then_search_dirs(tmp_path, monkeypatch):
    write(tmp_path / "sub" / "r.py", "def f(prompts, completions):\n    return [1.0] * len(prompts)\n")
    monkeypatch.chdir(tmp_path)
    assert load_reward_function("sub/r.py:f").form == "batch"
    assert load_reward_function("r.py:f", search_dirs=[tmp_path / "sub"]).form == "batch"


def test_two_files_with_the_same_name_do_not_clash(tmp_path):
    one = write(tmp_path / "a" / "rewards.py", "def f(prompt, completion):\n    return 1.0\n")
    two = write(tmp_path / "b" / "rewards.py", "def f(prompt, completion):\n    return 2.0\n")
    assert load_reward_function(f"{one}:f")(["p"], ["c"], {}) == [1.0]
    assert load_reward_function(f"{two}:f")(["p"], ["c"], {}) == [2.0]


def test_module_spec(tmp_path, monkeypatch):
    write(tmp_path / "my_rewards" / "__init__.py", "")
    write(
        tmp_path / "my_rewards" / "scoring.py",
        "def length(prompt, completion):\n    return len(completion)\n",
    )
    monkeypatch.syspath_prepend(tmp_path)
    fn = load_reward_function("my_rewards.scoring:length")
    assert (fn.name, fn.form) == ("length", "sample")
    assert fn(PROMPTS, COMPLETIONS, {}) == [1.0, 2.0, 3.0]


def test_callable_of_the_wrong_form_is_rejected():
    with pytest.raises(TypeError, match=r"(?s)'json:dumps'.*prompts, completions.*solution_str"):
        load_reward_function("json:dumps")


@pytest.mark.parametrize(
    ("spec", "error", "pattern"),
    [
        ("no_colon.py", ValueError, "path/to/file.py:function"),
        ("no_such_module_xyz:f", ImportError, "no_such_module_xyz.*PYTHONPATH"),
        ("missing_dir/missing.py:f", FileNotFoundError, "missing_dir/missing.py.*looked at"),
        ("json:no_such_fn", AttributeError, "has no function"),
        ("math:pi", TypeError, "float, not a function"),
    ],
)
def test_load_errors_name_the_spec_and_fix(spec, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        load_reward_function(spec)
    assert spec in str(info.value)


def test_missing_function_lists_available(tmp_path):
    path = write(tmp_path / "r.py", "def good(prompt, completion):\n    return 1.0\n\ndef other(): pass\n")
    with pytest.raises(AttributeError, match="its callables are: good, other"):
        load_reward_function(f"{path}:bad")


def test_file_that_raises_on_import(tmp_path):
    path = write(tmp_path / "r.py", "1 / 0\n")
    with pytest.raises(ImportError, match=r"ZeroDivisionError.*Fix the error in the file"):
        load_reward_function(f"{path}:f")


# --- calling conventions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "form"),
    [
        ("def f(prompts, completions):\n    return [len(c) for c in completions]\n", "batch"),
        ("def f(prompt, completion):\n    return len(completion)\n", "sample"),
        ("async def f(prompts, completions):\n    return [len(c) for c in completions]\n", "batch"),
        ("async def f(prompt, completion):\n    return len(completion)\n", "sample"),
    ],
)
def test_forms_give_one_float_per_sample(tmp_path, source, form):
    fn = load(tmp_path, source)
    assert fn.form == form
    assert fn(PROMPTS, COMPLETIONS, {}) == [1.0, 2.0, 3.0]


def test_async_per_sample_runs_concurrently_and_from_a_thread(tmp_path):
    fn = load(
        tmp_path,
        """
        import asyncio

        started = 0

        async def f(prompt, completion):
            global started
            started += 1

            async def all_started():  # only returns if every sample is in flight at once
                while started < 3:
                    await asyncio.sleep(0.001)

            await asyncio.wait_for(all_started(), timeout=5)
            return 1.0
        """,
    )
    results = []
    thread = threading.Thread(target=lambda: results.append(fn(PROMPTS, COMPLETIONS, {})))
    thread.start()
    thread.join()
    assert results == [[1.0, 1.0, 1.0]]


def test_verl_form_maps_columns_and_reads_score_dicts(tmp_path):
    fn = load(
        tmp_path,
        """
        def compute_score(data_source, solution_str, ground_truth, extra_info=None):
            score = float(solution_str == ground_truth)
            return {"score": score} if data_source == "dict" else score
        """,
        "compute_score",
    )
    assert (fn.form, fn.required_columns) == ("verl", set())
    assert fn(["p", "p"], ["4", "5"], {"ground_truth": ["4", "4"], "answer": ["5", "5"]}) == [1.0, 0.0]
    assert fn(["p", "p"], ["4", "5"], {"answer": ["5", "5"], "data_source": ["dict"] * 2}) == [0.0, 1.0]


def test_only_accepted_columns_are_passed(tmp_path):
    source = """
        def batch(prompts, completions, answer, weight=2.0):
            return [weight * (c == a) for c, a in zip(completions, answer)]

        def sample(prompt, completion, **columns):
            return len(columns)
        """
    columns = {"answer": ["a", "x", "ccc"], "other": [0, 0, 0]}
    batch = load(tmp_path, source, "batch")
    assert (batch.required_columns, batch.accepts_any_columns) == ({"answer"}, False)
    assert batch(PROMPTS, COMPLETIONS, columns) == [2.0, 0.0, 2.0]
    sample = load(tmp_path, source, "sample")
    assert (sample.required_columns, sample.accepts_any_columns) == (set(), True)
    assert sample(PROMPTS, COMPLETIONS, columns) == [2.0, 2.0, 2.0]


# --- manager ---------------------------------------------------------------------------------------

FUNCTIONS = """
    def length(prompt, completion):
        return len(completion)

    def first_only(prompts, completions):
        return [10.0] + [None] * (len(prompts) - 1)

    def never(prompt, completion):
        return None

    def boom(prompts, completions):
        return 1 / 0
    """


def test_weights_combine_and_none_means_no_opinion(tmp_path):
    rewards, metrics = manager(tmp_path, FUNCTIONS, ["length", "first_only"], weights=[1.0, 0.5]).score(
        PROMPTS, COMPLETIONS, {}
    )
    assert rewards == [6.0, 2.0, 3.0]
    assert metrics["reward/first_only/none_frac"] == pytest.approx(2 / 3)
    assert metrics["reward/first_only/mean"] == 10.0


def test_all_none_gives_nan_and_no_mean(tmp_path):
    rewards, metrics = manager(tmp_path, FUNCTIONS, ["never", "first_only"]).score(PROMPTS, COMPLETIONS, {})
    assert rewards[0] == 10.0
    assert math.isnan(rewards[1]) and math.isnan(rewards[2])
    assert "reward/never/mean" not in metrics
    assert metrics["reward/never/none_frac"] == 1.0


def test_metrics_keys_and_unique_names(tmp_path):
    _, metrics = manager(tmp_path, FUNCTIONS, ["length", "length"]).score(PROMPTS, COMPLETIONS, {})
    expected = {"reward/errors", "reward/timeouts"}
    for name in ("length", "length_2"):
        expected |= {f"reward/{name}/{key}" for key in ("mean", "errors", "timeouts", "none_frac")}
        expected.add(f"timing/reward/{name}_s")
    assert set(metrics) == expected


def test_weights_must_match_functions(tmp_path):
    with pytest.raises(ValueError, match=r"2 values for 1 reward\.functions"):
        manager(tmp_path, FUNCTIONS, ["length"], weights=[1.0, 2.0])


def test_check_columns_names_function_missing_columns_and_fix(tmp_path):
    source = "def needs(prompts, completions, answer, level):\n    return [1.0] * len(prompts)\n"
    rm = manager(tmp_path, source, ["needs"])
    rm.check_columns(["answer", "level", "extra"])
    with pytest.raises(ValueError, match=r"'needs'.*\['level'\].*\['answer', 'question'\].*prompt_column"):
        rm.check_columns(["question", "answer"])


def test_raising_function_gets_failure_reward_and_is_logged_once(tmp_path, caplog):
    rm = manager(tmp_path, FUNCTIONS, ["boom", "length"], failure_reward=-1.0)
    with caplog.at_level(logging.ERROR, logger="rlft.rewards"):
        for _ in range(2):
            rewards, metrics = rm.score(PROMPTS, COMPLETIONS, {})
    assert rewards == [0.0, 1.0, 2.0]
    assert (metrics["reward/boom/errors"], metrics["reward/errors"], metrics["reward/boom/mean"]) == (
        3,
        3,
        -1.0,
    )
    assert len(caplog.records) == 1
    assert "boom" in caplog.text and "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text


@pytest.mark.parametrize(
    ("source", "values", "kind"),
    [
        ("def f(prompts, completions):\n    return [1.0]\n", [-1.0, -1.0, -1.0], "wrong length"),
        ("def f(prompts, completions):\n    return 1.0\n", [-1.0, -1.0, -1.0], "wrong length"),
        (
            "import numpy as np\n"
            "def f(prompts, completions):\n    return ['x', float('nan'), np.float32(0.5)]\n",
            [-1.0, -1.0, 0.5],
            "non-number",
        ),
        (
            "def f(prompt, completion):\n    return True if completion == 'a' else 1\n",
            [-1.0, 1.0, 1.0],
            "non-number",
        ),
        (
            "def f(prompt, completion):\n    return 10 // (len(completion) - 2)\n",
            [-10.0, -1.0, 10.0],
            "raised",
        ),
    ],
)
def test_bad_outputs_fail_only_their_samples(tmp_path, caplog, source, values, kind):
    rm = manager(tmp_path, source, ["f"], failure_reward=-1.0)
    with caplog.at_level(logging.ERROR, logger="rlft.rewards"):
        rewards, metrics = rm.score(PROMPTS, COMPLETIONS, {})
    assert rewards == values
    assert metrics["reward/f/errors"] == values.count(-1.0)
    assert len(caplog.records) == 1 and kind in caplog.text


# --- parameters (reward.params) --------------------------------------------------------------------

PARAMETRISED = """
    def scaled(prompts, completions, answer, scale, offset=0.0):
        return [scale * (c == a) + offset for c, a in zip(completions, answer)]

    def anything(prompt, completion, **columns):
        return columns.get("bonus", 0.0)
    """


def test_params_bind_constants_and_replace_required_columns(tmp_path):
    rm = manager(
        tmp_path,
        PARAMETRISED,
        ["scaled", "anything"],
        params={"scaled": {"scale": 2.0}, "anything": {"bonus": 1}},
    )
    with rm:
        assert rm.functions[0].required_columns == {"answer"}
        rm.check_columns(["answer"])
        rewards, _ = rm.score(PROMPTS, COMPLETIONS, {"answer": ["a", "x", "ccc"], "scale": [9, 9, 9]})
    assert rewards == [3.0, 1.0, 3.0]  # the parameter wins over a column of the same name


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        (
            {"scaled": {"scael": 1.0}},
            r"reward\.params\.scaled sets \['scael'\].*parameters are \['answer', 'offset', 'scale'\]",
        ),
        ({"scaled": {"prompts": []}}, r"sets \['prompts'\]"),
        (
            {"scaled_2": {"scale": 1.0}},
            r"\['scaled_2'\], which are not among the reward functions \['scaled'\]",
        ),
    ],
)
def test_bad_params_fail_at_start(tmp_path, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        manager(tmp_path, PARAMETRISED, ["scaled"], params=params)


def test_from_config_with_replaced_functions_ignores_params_of_others(tmp_path):
    from rlft.config import RewardConfig

    path = write(tmp_path / "rewards.py", PARAMETRISED)
    cfg = RewardConfig(
        functions=[f"{path}:scaled"], params={"scaled": {"scale": 3.0}}, timeout_s=5.0, executor="thread"
    )
    with RewardManager.from_config(cfg) as rm:
        assert rm.score(["p"], ["a"], {"answer": ["a"]})[0] == [3.0]
        assert (rm.timeout_s, type(rm.executor).__name__) == (5.0, "ThreadExecutor")
    with RewardManager.from_config(cfg, functions=[f"{path}:anything"]) as rm:
        assert rm.score(["p"], ["a"], {})[0] == [0.0]


# --- concurrency and timeouts ----------------------------------------------------------------------

HANGING = """
    import asyncio
    import os
    import time

    def busy(prompt, completion):
        while completion == "hang":
            pass
        return float(len(completion))

    def sleepy(prompt, completion):
        if completion == "hang":
            time.sleep(30)
        return float(len(completion))

    def batch_hang(prompts, completions):
        time.sleep(30)

    def dies(prompt, completion):
        if completion == "die":
            os._exit(3)
        return 1.0

    def nap(prompt, completion):
        time.sleep(0.5)
        return 1.0

    async def anap(prompt, completion):
        await asyncio.sleep(0.5)
        return 2.0

    async def ahang(prompt, completion):
        await asyncio.sleep(30 if completion == "hang" else 0)
        return 1.0

    async def blocks(prompt, completion):
        time.sleep(3)
        return 1.0

    def columns_of(prompt, completion, thing):
        return 1.0
    """


@pytest.mark.parametrize(
    ("executor", "name"), [("process", "busy"), ("thread", "sleepy"), ("process", "ahang")]
)
def test_a_hanging_call_times_out_and_the_run_goes_on(tmp_path, caplog, executor, name):
    """The hanging sample gets failure_reward and counts in timeouts; the others and the next
    call are unaffected (process: the worker was killed and is replaced)."""
    rm = manager(
        tmp_path, HANGING, [name], failure_reward=-1.0, timeout_s=2.0, executor=executor, max_concurrency=2
    )
    with rm, caplog.at_level(logging.ERROR, logger="rlft.rewards"):
        rewards, metrics = rm.score(["p"] * 3, ["ab", "hang", "abc"], {})
        assert rewards in ([2.0, -1.0, 3.0], [1.0, -1.0, 1.0])
        counts = (metrics[f"reward/{name}/timeouts"], metrics["reward/timeouts"], metrics["reward/errors"])
        assert counts == (1, 1, 0)
        assert "reward.timeout_s=2 s" in caplog.text and f"reward/{name}/timeouts" in caplog.text
        rewards, metrics = rm.score(["p"], ["abcd"], {})
        assert rewards in ([4.0], [1.0]) and metrics["reward/timeouts"] == 0
    if name == "busy":
        assert rm.executor.killed == 1


def test_a_batch_call_that_times_out_fails_all_its_samples(tmp_path):
    with manager(tmp_path, HANGING, ["batch_hang", "nap"], timeout_s=3.0, failure_reward=-1.0) as rm:
        rewards, metrics = rm.score(PROMPTS, COMPLETIONS, {})
    assert rewards == [0.0, 0.0, 0.0]  # -1 from batch_hang + 1 from nap
    assert metrics["reward/batch_hang/timeouts"] == 3


def test_a_worker_that_dies_fails_only_its_call(tmp_path, caplog):
    rm = manager(tmp_path, HANGING, ["dies"], failure_reward=-1.0, max_concurrency=1)
    with rm, caplog.at_level(logging.ERROR, logger="rlft.rewards"):
        rewards, metrics = rm.score(["p"] * 3, ["ok", "die", "ok"], {})
    assert rewards == [1.0, -1.0, 1.0] and metrics["reward/dies/errors"] == 1
    assert "worker process died during the call (exit code 3)" in caplog.text


def test_calls_run_concurrently_sync_and_async_together(tmp_path):
    """8 per-sample calls of 0.5 s each, sync and async, with 4 in flight of each kind: about 0.5 s
    (4.0 s one after the other)."""
    with manager(tmp_path, HANGING, ["nap", "anap"], executor="thread", max_concurrency=4) as rm:
        start = time.perf_counter()
        rewards, metrics = rm.score(["p"] * 4, ["a"] * 4, {})
        elapsed = time.perf_counter() - start
    assert rewards == [3.0] * 4
    assert elapsed < 2.5, elapsed
    assert metrics["timing/reward/nap_s"] == pytest.approx(2.0, abs=0.5)  # summed call time


def test_process_workers_run_calls_in_parallel(tmp_path):
    with manager(tmp_path, HANGING, ["nap"], max_concurrency=2) as rm:
        rm.score(["p"] * 2, ["a"] * 2, {})  # starts the two workers
        start = time.perf_counter()
        assert rm.score(["p"] * 8, ["a"] * 8, {})[0] == [1.0] * 8
        assert time.perf_counter() - start < 3.5  # one at a time: 4.0 s, two at a time: 2.0 s


def test_an_async_function_that_blocks_its_loop_times_out(tmp_path, caplog):
    rm = manager(tmp_path, HANGING, ["blocks"], timeout_s=0.2, max_concurrency=1, failure_reward=-1.0)
    with rm, caplog.at_level(logging.ERROR, logger="rlft.rewards"):
        rewards, metrics = rm.score(["p"], ["a"], {})
    assert rewards == [-1.0] and metrics["reward/blocks/timeouts"] == 1
    assert "blocks the event loop" in caplog.text


def test_unpicklable_arguments_fail_their_call_only(tmp_path):
    with manager(tmp_path, HANGING, ["columns_of"], failure_reward=-1.0) as rm:
        rewards, metrics = rm.score(["p", "p"], ["a", "b"], {"thing": [1, lambda: 0]})
    assert rewards == [1.0, -1.0] and metrics["reward/columns_of/errors"] == 1


def test_verl_file_through_the_manager(tmp_path):
    source = """
        def compute_score(data_source, solution_str, ground_truth, extra_info=None):
            return {"score": float(solution_str.strip() == ground_truth), "extra": data_source}
        """
    with manager(tmp_path, source, ["compute_score"]) as rm:
        rewards, _ = rm.score(["p", "p"], ["4", "5"], {"ground_truth": ["4", "4"], "data_source": ["x", "y"]})
    assert rewards == [1.0, 0.0]


# --- reward-model worker ---------------------------------------------------------------------------


def test_reward_model_truncates_from_the_left(tiny_model_dir, caplog):
    """A long text is scored on its last max_tokens tokens; padding does not change a score."""
    import torch

    from rlft.config import RewardModelConfig
    from rlft.rewards.model_worker import RewardModelWorker

    worker = RewardModelWorker(RewardModelConfig(path=str(tiny_model_dir), max_tokens=4096))
    prompts, completions = ["a b c d e f g h i j k l m n o p " * 4, "x"], [" 7 7 7", " 7"]
    texts = [worker._text(p, c) for p, c in zip(prompts, completions, strict=True)]
    long, short = (worker.tokenizer(text)["input_ids"] for text in texts)
    worker.max_tokens = len(short)  # only the first text is too long
    assert len(long) > len(short)
    with caplog.at_level(logging.WARNING, logger="rlft.rewards"):
        scores = worker.score(prompts, completions)
    assert worker.truncated == 1 and f"keep their last {len(short)} tokens" in caplog.text
    with torch.no_grad():
        model = worker.model
        alone = [model(input_ids=torch.tensor([x])).logits[0, 0].item() for x in (long[-len(short) :], short)]
    assert scores == pytest.approx(alone, abs=1e-5)
    assert RewardModelWorker(RewardModelConfig(path=str(tiny_model_dir))).max_tokens == (
        worker.model.config.max_position_embeddings
    )
