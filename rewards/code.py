"""Code correctness: run the completion's Python against the sample's tests in a sandbox."""

import re

from rlft.rewards.sandbox import SandboxLimits, run_tests

_FENCE = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def code_tests(
    prompt: str,
    completion: str,
    tests: str | list[str],
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
) -> float:
    """Fraction of ``tests`` that pass against the completion's code, run in a sandbox.

    Columns: ``tests``, Python source whose assertions check the solution: one string (scored all
    or nothing: 1.0 if it runs without raising, else 0.0), or a list of strings (each run
    separately after the solution; the score is the fraction that pass). Parameters
    (``reward.params.code_tests``): ``timeout_s`` (wall clock per sample) and ``memory_mb``.

    The solution is the last fenced block tagged ``python`` or ``py`` (else the last untagged
    fenced block); none scores 0.0. It runs in :func:`rlft.rewards.sandbox.run_tests`: the solution in
    a separate process under bubblewrap (no other process, network or file of ours visible) with CPU,
    memory, file-size and process limits and a wall-clock kill; the tests here, against stand-ins
    for the solution's names, so the solution cannot forge its score. A solution that loops, forks,
    allocates too much, opens sockets or writes large files scores 0.0. Set ``reward.timeout_s``
    above ``timeout_s`` so the sandbox, not the manager, ends a slow sample.
    """
    solution = extract_code(completion)
    if solution is None:
        return 0.0
    cases = [tests] if isinstance(tests, str) else list(tests)
    if not cases:
        raise ValueError("code_tests: the sample's 'tests' column is empty; give at least one test")
    result = run_tests(solution, cases, SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb))
    return result.passed / result.total


def extract_code(completion: str) -> str | None:
    """The last ```python (or ```py) fenced block, else the last untagged one, else None."""
    blocks = _FENCE.findall(completion)
    for wanted in (("python", "py", "python3"), ("",)):
        tagged = [code for tag, code in blocks if tag.lower() in wanted]
        if tagged:
            return tagged[-1]
    return None
