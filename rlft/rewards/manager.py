"""Combine weighted reward functions into one reward per sample; a function's failure never escapes.

All calls of all functions in one :meth:`RewardManager.score` run concurrently, each bounded by
``timeout_s`` (see :mod:`rlft.rewards.executors` for where they run and what a timeout can stop).
"""

import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from rlft.errors import RunFailed
from rlft.rewards.executors import (
    OUTPUT_TAIL_BYTES,
    AsyncJobs,
    Job,
    Output,
    ProcessExecutor,
    ThreadExecutor,
)
from rlft.rewards.loader import Failure, RewardFunction, load_reward_function

if TYPE_CHECKING:
    from rlft.config import RewardConfig

logger = logging.getLogger("rlft.rewards")

EXECUTORS = {"process": ProcessExecutor, "thread": ThreadExecutor}


class RewardManager:
    """Loads reward functions from their specs and scores samples with their weighted sum.

    Per sample, each function gives a float or ``None`` ("no opinion"). The sample's reward is the
    weighted sum over the functions with an opinion, or NaN when none has one (the advantage code
    leaves NaN out of the group baseline). Where a function raises, times out, returns the wrong
    length or a non-number, the samples concerned get ``failure_reward`` from it; the failure is
    counted in the metrics and logged once per function and kind of failure.

    Sync functions run in ``executor`` (``process``: killable worker processes; ``thread``), async
    ones are awaited concurrently; at most ``max_concurrency`` calls of each kind are in flight.
    Call :meth:`close` (or use it as a context manager) to stop the worker processes early; they
    also end with this process.
    """

    def __init__(
        self,
        specs: Sequence[str],
        weights: Sequence[float] | None = None,
        failure_reward: float = 0.0,
        search_dirs: Sequence[Path] = (),
        *,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        timeout_s: float = 30.0,
        max_concurrency: int = 8,
        executor: str = "process",
        ignore_unknown_params: bool = False,
        max_failed_steps: int = 0,
    ) -> None:
        """Load every function now, so a bad spec fails at start; no (or empty) weights = 1.0 each.

        ``params`` maps a function's (unique) name to constant keyword arguments for it; a name that
        is not one of the functions is an error unless ``ignore_unknown_params``.
        ``max_failed_steps`` > 0: :meth:`score` raises :class:`~rlft.errors.RunFailed` once a
        function has failed on every sample of that many calls of it in a row.
        """
        if not specs:
            raise ValueError("no reward functions: set reward.functions=[path/to/file.py:function, ...]")
        if weights and len(weights) != len(specs):
            raise ValueError(
                f"reward.weights has {len(weights)} values for {len(specs)} reward.functions; "
                "give one weight per function, or none for 1.0 each"
            )
        if executor not in EXECUTORS:
            raise ValueError(f"reward.executor={executor!r} is not one of {sorted(EXECUTORS)}")
        if timeout_s <= 0 or max_concurrency < 1:
            raise ValueError("reward.timeout_s must be > 0 and reward.max_concurrency >= 1")
        functions = _unique_names([load_reward_function(s, search_dirs=search_dirs) for s in specs])
        self.functions = _bind_params(functions, params or {}, ignore_unknown_params)
        self.weights = [float(w) for w in weights] if weights else [1.0] * len(specs)
        self.failure_reward = failure_reward
        self.timeout_s, self.max_concurrency = timeout_s, max_concurrency
        self.executor = EXECUTORS[executor](self.functions, max_concurrency, timeout_s)
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.max_failed_steps = max_failed_steps
        self._failed_in_a_row = [0] * len(self.functions)
        self._output_logged: set[str] = set()

    @classmethod
    def from_config(
        cls,
        cfg: "RewardConfig",
        search_dirs: Sequence[Path] = (),
        functions: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
    ) -> "RewardManager":
        """The manager ``reward.*`` describes; ``functions``/``weights`` replace the configured ones
        (evaluation), and then ``reward.params`` for functions not among them are ignored."""
        return cls(
            cfg.functions if functions is None else functions,
            (cfg.weights if functions is None else weights) or None,
            cfg.failure_reward,
            search_dirs,
            params=cfg.params,
            timeout_s=cfg.timeout_s,
            max_concurrency=cfg.max_concurrency,
            executor=cfg.executor,
            ignore_unknown_params=functions is not None,
            max_failed_steps=cfg.max_failed_steps,
        )

    def close(self) -> None:
        """Stop the worker processes (they restart if :meth:`score` is called again)."""
        self.executor.close()

    def __enter__(self) -> "RewardManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_columns(self, available: Iterable[str]) -> None:
        """Raise a ValueError naming every function whose required columns the dataset lacks."""
        available = sorted(available)
        problems = [
            f"reward function {fn.name!r} ({fn.spec}) needs column(s) {sorted(missing)}"
            for fn in self.functions
            if (missing := fn.required_columns.difference(available))
        ]
        if problems:
            raise ValueError(
                f"{'; '.join(problems)}, but the dataset's columns are {available}. Fix: add the column "
                "to the dataset or map an existing one to its name, set data.prompt_column if it is "
                "the prompt, or give the parameter a default."
            )

    def score(
        self, prompts: list[str], completions: list[str], columns: dict[str, list]
    ) -> tuple[list[float], dict[str, float]]:
        """Combined reward per sample (NaN = no opinion from any function) and a flat metrics dict
        (see :meth:`score_per_function`)."""
        totals, metrics, _ = self.score_per_function(prompts, completions, columns)
        return totals, metrics

    def score_per_function(
        self, prompts: list[str], completions: list[str], columns: dict[str, list]
    ) -> tuple[list[float], dict[str, float], dict[str, list[float | None]]]:
        """Combined reward per sample (NaN = no opinion from any function), a flat metrics dict, and
        each function's value per sample by its metric name (``None`` = no opinion; a failure counts
        as ``failure_reward``).

        Metrics per function: ``reward/<fn>/mean`` (over samples with a value, failures counted at
        ``failure_reward``), ``/none_frac``, ``/errors`` (raised, bad output, worker died),
        ``/timeouts``, ``/output_bytes`` (what it printed, captured by the process executor; the
        first time, its tail is logged) and ``timing/reward/<fn>_s`` (its calls' summed duration:
        they overlap); in total ``reward/errors`` and ``reward/timeouts``.
        """
        with self._lock:
            results = self._run_all(prompts, completions, columns)
        n = len(prompts)
        totals = [0.0] * n
        has_opinion = [False] * n
        metrics: dict[str, float] = {"reward/errors": 0, "reward/timeouts": 0}
        per_function: dict[str, list[float | None]] = {}
        for index, (fn, weight, (outputs, seconds)) in enumerate(
            zip(self.functions, self.weights, results, strict=True)
        ):
            metrics[f"timing/reward/{fn.name}_s"] = seconds
            values = per_function[fn.name] = [self._value(fn, output) for output in outputs]
            for i, value in enumerate(values):
                if value is not None:
                    totals[i] += weight * value
                    has_opinion[i] = True
            numeric = [value for value in values if value is not None]
            timeouts = sum(isinstance(out, Failure) and out.kind == "timeout" for out in outputs)
            errors = sum(isinstance(out, Failure) for out in outputs) - timeouts
            self._count_failures(index, n, outputs)
            if (printed := self.executor.output.pop(index, None)) is not None:
                metrics[f"reward/{fn.name}/output_bytes"] = printed.num_bytes
                self._log_output(fn, printed)
            metrics["reward/errors"] += errors
            metrics["reward/timeouts"] += timeouts
            metrics[f"reward/{fn.name}/errors"] = errors
            metrics[f"reward/{fn.name}/timeouts"] = timeouts
            metrics[f"reward/{fn.name}/none_frac"] = (n - len(numeric)) / n if n else 0.0
            if numeric:
                metrics[f"reward/{fn.name}/mean"] = fmean(numeric)
        combined = [t if ok else math.nan for t, ok in zip(totals, has_opinion, strict=True)]
        return combined, metrics, per_function

    def _run_all(
        self, prompts: list[str], completions: list[str], columns: dict[str, list]
    ) -> list[tuple[list[float | Failure | None], float]]:
        """Every function's values (one per sample) and summed call time, all calls concurrent."""
        jobs: list[Job] = [
            (i, kwargs)
            for i, fn in enumerate(self.functions)
            for kwargs in fn.calls(prompts, completions, columns)
        ]
        is_async = [self.functions[i].is_async for i, _ in jobs]
        async_jobs = [job for job, a in zip(jobs, is_async, strict=True) if a]
        sync_jobs = [job for job, a in zip(jobs, is_async, strict=True) if not a]
        awaiting = None
        if async_jobs:
            awaiting = AsyncJobs(self.functions, async_jobs, self.max_concurrency, self.timeout_s)
        sync_results = iter(self.executor.run(sync_jobs))
        async_results = iter(awaiting.join() if awaiting else [])
        per_function: list[tuple[list[float | Failure | None], float]] = [([], 0.0) for _ in self.functions]
        for (i, _), a in zip(jobs, is_async, strict=True):
            values, seconds = next(async_results if a else sync_results)
            per_function[i] = (per_function[i][0] + values, per_function[i][1] + seconds)
        return per_function

    def _count_failures(self, index: int, n: int, outputs: list[float | Failure | None]) -> None:
        """Count calls in a row where function ``index`` failed on all ``n`` samples; past
        ``max_failed_steps`` of them, stop the run naming it and its last error."""
        failures = [out for out in outputs if isinstance(out, Failure)]
        self._failed_in_a_row[index] = self._failed_in_a_row[index] + 1 if n and len(failures) == n else 0
        if self.max_failed_steps and self._failed_in_a_row[index] >= self.max_failed_steps:
            fn, last = self.functions[index], failures[-1]
            printed = self.executor.output.get(index)
            raise RunFailed(
                f"reward function {fn.name!r} ({fn.spec}) failed on every sample of "
                f"{self._failed_in_a_row[index]} steps in a row (reward.max_failed_steps="
                f"{self.max_failed_steps}); its last error: {last.message}"
                + (f"\n{last.trace.rstrip()}" if last.trace else "")
                + (f"\nits last output:\n{printed.tail.rstrip()}" if printed else "")
                + "\nFix the function, or set reward.max_failed_steps=0 to keep training with its "
                "failure_reward"
            )

    def _log_output(self, fn: RewardFunction, printed: Output) -> None:
        """Log, the first time, that ``fn`` printed (captured, not shown) and the tail of it."""
        if fn.name in self._output_logged:
            return
        self._output_logged.add(fn.name)
        logger.warning(
            "reward function %r (%s) printed %d bytes in one call; its output is captured, not shown "
            "(metric reward/%s/output_bytes). Logged once; the end of it:\n%s",
            fn.name,
            fn.spec,
            printed.num_bytes,
            fn.name,
            printed.tail[-OUTPUT_TAIL_BYTES // 2 :].rstrip(),
        )

    def _value(self, fn: RewardFunction, result: float | Failure | None) -> float | None:
        """The sample's value from ``fn``: its result, or ``failure_reward`` (logged once) if it failed."""
        if not isinstance(result, Failure):
            return result
        if (fn.name, result.kind) not in self._logged:
            self._logged.add((fn.name, result.kind))
            logger.error(
                "reward function %r (%s) %s; such samples get failure_reward=%s. Logged once: later "
                "'%s' failures of this function only count in the metric reward/%s/%s.%s",
                fn.name,
                fn.spec,
                result.message,
                self.failure_reward,
                result.kind,
                fn.name,
                "timeouts" if result.kind == "timeout" else "errors",
                f"\n{result.trace}" if result.trace else "",
            )
        return self.failure_reward


def _unique_names(functions: list[RewardFunction]) -> list[RewardFunction]:
    """The functions with ``_2``, ``_3``... appended to repeated names, so their metrics stay apart."""
    used: set[str] = set()
    unique = []
    for fn in functions:
        name, k = fn.name, 1
        while name in used:
            k += 1
            name = f"{fn.name}_{k}"
        used.add(name)
        unique.append(replace(fn, name=name))
    return unique


def _bind_params(
    functions: list[RewardFunction], params: Mapping[str, Mapping[str, Any]], ignore_unknown: bool
) -> list[RewardFunction]:
    """The functions with their ``reward.params`` bound; a name no function has is a ValueError."""
    names = [fn.name for fn in functions]
    unknown = sorted(set(params).difference(names))
    if unknown and not ignore_unknown:
        raise ValueError(
            f"reward.params has entries for {unknown}, which are not among the reward functions "
            f"{names}. Key reward.params by the function's name (_2, _3... for repeats)."
        )
    return [fn.with_params(dict(params[fn.name])) if fn.name in params else fn for fn in functions]
