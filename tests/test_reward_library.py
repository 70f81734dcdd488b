"""The reward library in rewards/: right and wrong answers, and adversarial completions.

Each function is loaded by path, as a user's config references it. The expected values are worked
out by hand from the function's docstring.
"""

import glob
import math
import time
from pathlib import Path

import pytest

from rlft.rewards import RewardManager, load_reward_function
from rlft.rewards.sandbox import SandboxLimits, run_tests

ROOT = Path(__file__).resolve().parents[1]
HUGE = "x" * 1_000_000  # a 1 MB completion


def short_id(value: object) -> str:
    """Test ids without megabytes of parameter."""
    text = repr(value)
    return text if len(text) < 40 else f"{text[:30]}...({len(text)} chars)"


def score(spec: str, completions: list[str], **columns) -> list[float]:
    """Load ``rewards/<spec>`` and score ``completions`` in this thread (no manager, no timeout)."""
    fn = load_reward_function(f"rewards/{spec}", search_dirs=[ROOT])
    return fn([""] * len(completions), completions, {k: v * len(completions) for k, v in columns.items()})


# --- math_answer -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (r"so the answer is $\boxed{\frac{1}{2}}$.", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"<answer>x = 3</answer>", "3", 1.0),
        ("The total is\n#### 72", "#### 72", 1.0),
        (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", 1.0),
        (r"\boxed{(1,2]}", r"(1,2]", 1.0),
        (r"\boxed{3}", "4", 0.0),
        (r"\boxed{[1,2]}", r"(1,2]", 0.0),
        ("the answer is 0.5", "0.5", 0.0),  # no boxed / <answer> / ####: no answer
        ("", "0.5", 0.0),
        (r"\boxed{1} no wait \boxed{2}", "2", 1.0),  # several answers: the last counts
        (r"\boxed{1} no wait \boxed{2}", "1", 0.0),
        (HUGE + r"\boxed{7}", "7", 1.0),
        (HUGE, "7", 0.0),
        (r"答案是 $\boxed{3}$ ✓", "3", 1.0),
        (r"\boxed{日本}", "3", 0.0),
        (r"\boxed{\frac{1}{", "1", 0.0),  # malformed LaTeX
        (r"\boxed{\frac{1}{2}", "0.5", 0.0),  # unclosed boxed
        (r"\boxed{}", "0", 0.0),
        (r"\boxed{\frac{1}{}}", "1", 0.0),
        ("\\boxed{" * 1000 + "3", "3", 0.0),
    ],
    ids=short_id,
)
def test_math_answer(completion, answer, expected):
    assert score("math_answer.py:math_answer", [completion], answer=[answer]) == [expected]


def test_math_answer_empty_ground_truth_is_an_error_not_a_zero():
    fn = load_reward_function("rewards/math_answer.py:math_answer", search_dirs=[ROOT])
    (result,) = fn([""], [r"\boxed{3}"], {"answer": [" "]})
    assert result.kind == "raised" and "ground truth" in result.message


DAPO_END = "\n\nTherefore the sum is 34.\nAnswer: 34"  # the last line DAPO-Math-17k's prompts ask for


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (DAPO_END, "34", 1.0),
        (DAPO_END, "35", 0.0),
        ("answer : 1/2", r"\frac{1}{2}", 1.0),  # any case, blanks before the colon, equivalence
        ("Final Answer: $x = 3$", "3", 1.0),
        (r"Answer: \boxed{\frac{1}{2}}", "0.5", 1.0),  # a boxed answer on the line is unwrapped
        ("Answer:\n\n  7", "7", 1.0),  # the answer on the next non-blank line
        ("Answer: 3 (the first)\nWait, no.\nAnswer: 4", "4", 1.0),  # several: the last one counts
        ("Answer: 3 (the first)\nWait, no.\nAnswer: 4", "3", 0.0),
        ("Answer: 4\nAnswer:", "4", 0.0),  # the last marker has no answer: no answer
        ("Answer: Answer: 5", "5", 1.0),  # the last marker, even on the same line
        ("Therefore the sum is 34.", "34", 0.0),  # no "Answer:": 0, not the last number
        (r"so $\boxed{34}$", "34", 0.0),  # with answer_line only the Answer: line counts
        ("", "34", 0.0),
        ("Answer: 日本", "34", 0.0),
        (HUGE + "\nAnswer: 7", "7", 1.0),
        ("answer" * 200_000 + ":", "7", 0.0),
        ("Answer: 7" + "\nanswer " * 100_000, "7", 1.0),  # markers need their colon
    ],
    ids=short_id,
)
def test_math_answer_reads_the_answer_line(completion, answer, expected):
    fn = load_reward_function("rewards/math_answer.py:math_answer", search_dirs=[ROOT])
    fn = fn.with_params({"answer_line": True})
    assert fn([""], [completion], {"answer": [answer]}) == [expected]


def test_math_answer_ignores_answer_lines_by_default():
    assert score("math_answer.py:math_answer", [DAPO_END], answer=["34"]) == [0.0]


@pytest.mark.parametrize("recipe", ["dapo_math", "gspo_math"])
def test_dapo_math_recipes_read_the_answer_line(recipe):
    from rlft.cli import load_config

    cfg = load_config([f"recipe={recipe}", "reward.executor=thread"])
    with RewardManager.from_config(cfg.reward, search_dirs=[ROOT]) as manager:
        scores, _ = manager.score([""], [DAPO_END], {"answer": ["34"]})
    assert scores == [1.0]


# --- gsm8k -----------------------------------------------------------------------------------------

GSM8K_TRUTH = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72"


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("She sold 48 + 24 clips.\n#### 72", GSM8K_TRUTH, 1.0),
        (r"The answer is \boxed{72}.", GSM8K_TRUTH, 1.0),
        ("48 + 24 = 72", GSM8K_TRUTH, 1.0),  # last number
        ("#### $1,080.00", "1080", 1.0),
        ("#### 72.0 clips", "72", 1.0),
        ("#### -3", "-3", 1.0),
        ("#### 71", GSM8K_TRUTH, 0.0),
        ("72 clips, so #### 73", GSM8K_TRUTH, 0.0),  # the marker wins over the last number
        ("#### 73\n#### 72", "72", 1.0),  # several markers: the last counts
        ("no idea", "72", 0.0),
        ("", "72", 0.0),
        (HUGE + " 72", "72", 1.0),
        ("1" * 1_000_000, "72", 0.0),
        ("答えは ７２ です", "72", 1.0),  # full-width digits are digits
        ("答えは 72 です", "72", 1.0),
        (r"\boxed{\frac{72}{", "72", 1.0),  # unclosed boxed: falls back to the last number
    ],
    ids=short_id,
)
def test_gsm8k(completion, answer, expected):
    assert score("gsm8k.py:gsm8k", [completion], answer=[answer]) == [expected]


def test_gsm8k_strict_needs_a_marker():
    fn = load_reward_function("rewards/gsm8k.py:gsm8k", search_dirs=[ROOT]).with_params({"strict": True})
    assert fn(["", ""], ["48 + 24 = 72", "#### 72"], {"answer": ["72", "72"]}) == [0.0, 1.0]


# --- countdown -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>93-43=50, +1</think>\n<answer>(93 - 43) + 1</answer>", 1.0),
        ("<answer>1 + 93 - 43</answer>", 1.0),
        ("<answer>(93 - 43) * 1</answer>", 0.1),  # well formed, wrong value
        ("<answer>93 - 43</answer>", 0.1),  # a number unused
        ("<answer>93 - 43 + 1 + 1</answer>", 0.1),  # a number used twice
        ("<answer>93 - 42 + 0</answer>", 0.1),  # numbers not given
        ("<answer>(93 - 43) / (1 - 1)</answer>", 0.1),  # division by zero
        ("<answer>93 ** 1 - 43</answer>", 0.1),  # operator not allowed
        ("<answer>__import__('os').system('echo hi')</answer>", 0.1),  # never evaluated
        ("<answer>93 - 43 + 1.0</answer>", 0.1),  # not an integer
        ("<answer>93 − 43 + 1</answer>", 0.1),  # unicode minus
        ("<answer>" + "(" * 300 + "1" + ")" * 300 + "</answer>", 0.1),
        ("<answer>" + "1+" * 5_000 + "1</answer>", 0.1),  # too long to parse
        ("(93 - 43) + 1", 0.0),  # no answer tags
        ("", 0.0),
        (HUGE, 0.0),
        ("<answer>1</answer> then <answer>(93 - 43) + 1</answer>", 1.0),  # the last one counts
        ("<answer>(93 - 43) + 1</answer> then <answer>1</answer>", 0.1),
    ],
    ids=short_id,
)
def test_countdown(completion, expected):
    assert score("countdown.py:countdown", [completion], target=[51], nums=[[93, 43, 1]]) == [expected]


def test_countdown_division_is_exact():
    # 100 / 3 * 3 is 100 exactly; in floats it would be 100.00000000000001.
    got = score("countdown.py:countdown", ["<answer>100 / 3 * 3</answer>"], target=[100], nums=[[100, 3, 3]])
    assert got == [1.0]


# --- format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        ("", "<think>reasoning</think>\n<answer>42</answer>", 1.0),
        ("", "  <think>a\nb</think><answer>42</answer>\n", 1.0),
        ("... Assistant: <think>", "reasoning</think> <answer>42</answer>", 1.0),  # pre-filled
        ("", "<answer>42</answer>", 0.0),
        ("", "<think>a</think>", 0.0),
        ("", "<answer>42</answer><think>a</think>", 0.0),
        ("", "preamble <think>a</think><answer>42</answer>", 0.0),
        ("", "<think>a</think><answer>42</answer> trailing", 0.0),
        ("", "<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answers
        ("", "<think><think>a</think><answer>1</answer>", 0.0),
        ("", "", 0.0),
        ("", "<think>" + HUGE + "</think><answer>1</answer>", 1.0),
        ("", "<think>" + HUGE, 0.0),
        ("", "<think>思考 ✓</think><answer>答え</answer>", 1.0),
        ([{"role": "user", "content": "q"}], "<think>a</think><answer>1</answer>", 1.0),  # chat prompt
        ([{"role": "assistant", "content": "<think>"}], "a</think><answer>1</answer>", 1.0),
        ([], "a</think><answer>1</answer>", 0.0),
    ],
    ids=short_id,
)
def test_think_answer_format(prompt, completion, expected):
    fn = load_reward_function("rewards/format.py:think_answer_format", search_dirs=[ROOT])
    assert fn([prompt], [completion], {}) == [expected]


def test_regex_match_from_params_or_column():
    fn = load_reward_function("rewards/format.py:regex_match", search_dirs=[ROOT])
    assert fn.required_columns == {"pattern"}
    completions = ["123", "a12", "", HUGE, "日本 42"]
    bound = fn.with_params({"pattern": r"\d+"})
    assert bound.required_columns == set()
    assert bound([""] * 5, completions, {}) == [1.0, 1.0, 0.0, 0.0, 1.0]
    full = fn.with_params({"pattern": r"\d+", "mode": "fullmatch"})
    assert full([""] * 5, completions, {}) == [1.0, 0.0, 0.0, 0.0, 0.0]
    per_sample = fn(["", ""], ["abc", "abc"], {"pattern": ["^a", "^b"]})
    assert per_sample == [1.0, 0.0]
    (bad,) = fn.with_params({"pattern": "("})([""], ["x"], {})
    assert bad.kind == "raised" and "missing )" in bad.message


# --- length ----------------------------------------------------------------------------------------


def test_length_penalty():
    fn = load_reward_function("rewards/length.py:length_penalty", search_dirs=[ROOT])
    lengths = ["a" * 5, "a" * 10, "a" * 20, "", "é" * 10]
    assert fn.with_params({"target_length": 10})([""] * 5, lengths, {}) == [-0.5, 0.0, -1.0, -1.0, 0.0]
    longer = fn.with_params({"target_length": 10, "only_longer": True, "scale": 2.0})
    assert longer([""] * 5, lengths, {}) == [0.0, 0.0, -2.0, 0.0, 0.0]
    assert longer([""], [HUGE], {}) == [-2.0 * (1_000_000 - 10) / 10]


def test_length_penalty_in_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    text = "hello world, hello tokens"
    n_tokens = len(AutoTokenizer.from_pretrained(tiny_model_dir)(text, add_special_tokens=False)["input_ids"])
    fn = load_reward_function("rewards/length.py:length_penalty", search_dirs=[ROOT])
    fn = fn.with_params({"target_length": n_tokens, "tokenizer": str(tiny_model_dir)})
    assert n_tokens != len(text) and fn([""], [text], {}) == [0.0]


def test_dapo_overlong_matches_eq_13():
    # L_max = 10, L_cache = 4: no penalty up to 6, then (6 - |y|) / 4, and -1 from 10 on.
    fn = load_reward_function("rewards/length.py:dapo_overlong", search_dirs=[ROOT])
    fn = fn.with_params({"max_length": 10, "buffer_length": 4, "penalty": 0.5})
    got = fn([""] * 5, ["a" * n for n in (0, 6, 7, 10, 1000)], {})
    assert got == pytest.approx([0.0, 0.0, -0.125, -0.5, -0.5])


# --- code_tests and the sandbox --------------------------------------------------------------------

SOLUTION = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"
ADVERSARIAL_CODE = {
    "loops forever": "while True:\n    pass",
    "sleeps": "import time\ntime.sleep(60)",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "subprocess": "import subprocess\nsubprocess.run(['sleep', '60'])",
    "huge memory": "x = bytearray(8 << 30)",
    "opens a socket": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
    "writes a big file": "with open('big', 'wb') as f:\n    f.write(b'0' * (64 << 20))",
    "writes many files": "for i in range(1000):\n    open(f'f{i}', 'w').write('x')",
    "writes outside": "open('/tmp/rlft-sandbox-escape', 'w').write('x')",
    "kills its parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "native fork": "import ctypes\nctypes.CDLL(None).fork()",
    "exits 0 early": "import sys\nsys.exit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "prints success": "print('all tests passed')\ndef add(a, b):\n    return 0",
}


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def code_fn(timeout_s: float = 10.0):
    fn = load_reward_function("rewards/code.py:code_tests", search_dirs=[ROOT])
    return fn.with_params({"timeout_s": timeout_s, "memory_mb": 512})


def test_code_tests_scores_passing_fraction():
    fn = code_fn()
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
    got = fn(
        ["", "", "", ""], [SOLUTION, SOLUTION, "no code here", ""], {"tests": [tests[0], tests, tests, tests]}
    )
    assert got == [1.0, pytest.approx(2 / 3), 0.0, 0.0]


def test_code_extraction_prefers_the_last_python_block():
    fn = code_fn()
    two = fenced("def add(a, b):\n    return 0") + "\nfixed:\n" + fenced("def add(a, b):\n    return a + b")
    untagged = "```\ndef add(a, b):\n    return a + b\n```"
    unicode = fenced("def add(a, b):\n    # 足し算 ✓\n    return a + b")
    huge = HUGE + SOLUTION
    got = fn([""] * 4, [two, untagged, unicode, huge], {"tests": ["assert add(1, 2) == 3"] * 4})
    assert got == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", list(ADVERSARIAL_CODE), ids=short_id)
def test_adversarial_code_scores_zero(name):
    start = time.monotonic()
    result = run_tests(
        ADVERSARIAL_CODE[name], ["assert add(1, 2) == 3"], SandboxLimits(timeout_s=2, memory_mb=512)
    )
    assert (result.passed, result.status != "passed") == (0, True)
    assert time.monotonic() - start < 15  # 2 s if it hangs; more only on a very loaded machine
    assert not Path("/tmp/rlft-sandbox-escape").exists()


def test_sandbox_statuses_and_isolation():
    assert run_tests("while True: pass", ["pass"], SandboxLimits(timeout_s=1)).status == "timeout"
    limits = SandboxLimits(timeout_s=10, memory_mb=512)  # generous: these must finish
    assert run_tests("import os\nos._exit(0)", ["pass"], limits).status == "crashed"
    fork = run_tests("import os\nos.fork()", ["pass"], limits)
    assert (fork.status, "os.fork is not allowed" in fork.detail) == ("failed", True)
    # Tests run outside the sandbox: they see its files only through the solution's functions.
    ok = run_tests(
        "open('x', 'w').write('hi')\ndef read():\n    return open('x').read()",
        ["assert read() == 'hi'"],
        limits,
    )
    assert ok.status == "passed"
    assert ok.isolation in ("bwrap", "hook")
    assert not glob.glob("/tmp/rlft-sandbox-*/work/x")  # the working directory is gone


REMOTE_SOLUTION = """
import math
class Stack:
    def __init__(self, items=()):
        self.items = list(items)
    def push(self, item):
        self.items.append(item)
    def pop(self):
        if not self.items:
            raise EmptyError("empty")
        return self.items.pop()
    def __len__(self):
        return len(self.items)
class EmptyError(IndexError):
    pass
def squares(n):
    yield from (i * i for i in range(n))
def area(r, *, scale=1.0):
    return math.pi * r * r * scale
def stats(xs):
    return {"min": min(xs), "max": max(xs)}, (len(xs), sum(xs))
def size_of(stack):
    return len(stack)
"""
REMOTE_TESTS = [
    "s = Stack([1]); s.push(2); assert s.pop() == 2 and len(s) == 1 and s.items == [1]",
    "try:\n    Stack().pop()\nexcept IndexError as e:\n    assert 'empty' in str(e)\n"
    "else:\n    raise AssertionError",
    "assert list(squares(4)) == [0, 1, 4, 9] and sum(squares(3)) == 5",
    "import math\nassert math.isclose(area(2, scale=0.5), 2 * math.pi)",
    "assert stats([3, 1, 2]) == ({'min': 1, 'max': 3}, (3, 6))",
    "assert size_of(Stack([1, 2, 3])) == 3",
    "def check(candidate):\n    assert candidate(3) is not None\n"
    "    assert sorted(candidate(3)) == [0, 1, 4]\ncheck(squares)",
]


def test_tests_see_the_solution_through_remote_values():
    """Tests run outside the sandbox: classes, methods, generators, keyword arguments, exceptions
    (as the builtin class they derive from) and values passed back in all work as in one process."""
    result = run_tests(REMOTE_SOLUTION, REMOTE_TESTS, SandboxLimits(timeout_s=20, memory_mb=512))
    assert (result.status, result.passed, result.detail) == ("passed", len(REMOTE_TESTS), "")
    wrong = REMOTE_SOLUTION.replace("return self.items.pop()", "return self.items[0]")
    assert run_tests(wrong, REMOTE_TESTS[:1], SandboxLimits(timeout_s=20)).status == "failed"


def test_adversarial_code_through_the_manager_the_run_goes_on(tmp_path):
    """Every adversarial sample scores 0 (failure_reward) and the good ones still score 1, twice."""
    completions = [SOLUTION, *(fenced(code) for code in ADVERSARIAL_CODE.values()), SOLUTION]
    n = len(completions)
    rm = RewardManager(
        ["rewards/code.py:code_tests"],
        search_dirs=[ROOT],
        params={"code_tests": {"timeout_s": 3.0, "memory_mb": 512}},
        timeout_s=30.0,
        max_concurrency=2,
    )
    with rm:
        for _ in range(2):
            rewards, metrics = rm.score([""] * n, completions, {"tests": ["assert add(1, 2) == 3"] * n})
            assert rewards == [1.0] + [0.0] * (n - 2) + [1.0]
            assert metrics["reward/errors"] == metrics["reward/timeouts"] == 0


def test_manager_kills_a_hanging_math_check(tmp_path):
    """sympy can take long on some answers (math-verify's own limit is 5 s per step in a main
    thread); the call is killed at reward.timeout_s."""
    rm = RewardManager(
        ["rewards/math_answer.py:math_answer"], search_dirs=[ROOT], timeout_s=4.0, failure_reward=-1.0
    )
    with rm:
        rm.score([""], [r"\boxed{1}"], {"answer": ["1"]})  # warm up the worker's sympy
        start = time.monotonic()
        rewards, metrics = rm.score(
            ["", "", ""], [r"\boxed{2}", r"\boxed{10^{10^{10}}}", r"\boxed{3}"], {"answer": ["2", "1", "4"]}
        )
        assert rewards == [1.0, -1.0, 0.0]
        assert metrics["reward/math_answer/timeouts"] == 1
        assert time.monotonic() - start < 30
        rewards, _ = rm.score([""], [r"\boxed{\frac{1}{2}}"], {"answer": ["0.5"]})  # a new worker
        assert rewards == [1.0] and not math.isnan(rewards[0])


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "conf" / "reward").glob("*.yaml")))
def test_reward_presets_compose_and_load(preset, monkeypatch):
    from rlft.cli import load_config

    monkeypatch.chdir(ROOT)
    cfg = load_config([f"reward={preset}"])
    with RewardManager.from_config(cfg.reward, search_dirs=[ROOT]) as rm:
        assert [fn.spec for fn in rm.functions] == cfg.reward.functions


def test_library_through_the_manager_with_adversarial_completions():
    """Several library functions at once on adversarial completions: the batch call whose regex
    backtracks catastrophically times out (all its samples), the others score as when called alone."""
    completions = [
        "<think>ok</think><answer>#### 72</answer>",
        HUGE + "\n#### 72",
        "",
        "日本語 <answer>" + "\\boxed{" * 100 + "</answer>",
        "a" * 40 + "b",
    ]
    n = len(completions)
    functions = ["gsm8k.py:gsm8k", "format.py:think_answer_format", "format.py:regex_match"]
    rm = RewardManager(
        [f"rewards/{f}" for f in functions],
        weights=[1.0, 0.5, 1.0],
        search_dirs=[ROOT],
        params={"regex_match": {"pattern": "^(a+)+$"}},
        timeout_s=3.0,
        failure_reward=-1.0,
    )
    with rm:
        rewards, metrics = rm.score([""] * n, completions, {"answer": ["72"] * n})
    assert metrics["reward/regex_match/timeouts"] == n
    assert (metrics["reward/gsm8k/mean"], metrics["reward/think_answer_format/mean"]) == (0.4, 0.2)
    assert rewards == [1.0 + 0.5 - 1.0, 1.0 - 1.0, -1.0, -1.0, -1.0]
