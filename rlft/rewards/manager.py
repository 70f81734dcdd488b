"""Combine weighted reward functions into one reward per sample; a function's failure never escapes.

Not yet here (a later issue): per-call timeouts and running the functions in a separate reward actor.
"""

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from statistics import fmean

from rlft.rewards.loader import Failure, RewardFunction, load_reward_function

logger = logging.getLogger("rlft.rewards")


class RewardManager:
    """Loads reward functions from their specs and scores samples with their weighted sum.

    Per sample, each function gives a float or ``None`` ("no opinion"). The sample's reward is the
    weighted sum over the functions with an opinion, or NaN when none has one (the advantage code
    leaves NaN out of the group baseline). Where a function raises, returns the wrong length or a
    non-number, the samples concerned get ``failure_reward`` from it; the failure is counted in the
    metrics and logged once per function and kind of failure.
    """

    def __init__(
        self,
        specs: Sequence[str],
        weights: Sequence[float] | None = None,
        failure_reward: float = 0.0,
        search_dirs: Sequence[Path] = (),
    ) -> None:
        """Load every function now, so a bad spec fails at start; no (or empty) weights = 1.0 each."""
        if not specs:
            raise ValueError("no reward functions: set reward.functions=[path/to/file.py:function, ...]")
        if weights and len(weights) != len(specs):
            raise ValueError(
                f"reward.weights has {len(weights)} values for {len(specs)} reward.functions; "
                "give one weight per function, or none for 1.0 each"
            )
        self.functions = _unique_names([load_reward_function(s, search_dirs=search_dirs) for s in specs])
        self.weights = [float(w) for w in weights] if weights else [1.0] * len(specs)
        self.failure_reward = failure_reward
        self._logged: set[tuple[str, str]] = set()

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
        """Combined reward per sample (NaN = no opinion from any function) and a flat metrics dict."""
        n = len(prompts)
        totals = [0.0] * n
        has_opinion = [False] * n
        metrics: dict[str, float] = {}
        total_errors = 0
        for fn, weight in zip(self.functions, self.weights, strict=True):
            start = time.perf_counter()
            results = fn(prompts, completions, columns)
            metrics[f"timing/reward/{fn.name}_s"] = time.perf_counter() - start
            values = [self._value(fn, result) for result in results]
            for i, value in enumerate(values):
                if value is not None:
                    totals[i] += weight * value
                    has_opinion[i] = True
            numeric = [value for value in values if value is not None]
            errors = sum(isinstance(result, Failure) for result in results)
            total_errors += errors
            metrics[f"reward/{fn.name}/errors"] = errors
            metrics[f"reward/{fn.name}/none_frac"] = (n - len(numeric)) / n if n else 0.0
            if numeric:
                metrics[f"reward/{fn.name}/mean"] = fmean(numeric)
        metrics["reward/errors"] = total_errors
        return [t if ok else math.nan for t, ok in zip(totals, has_opinion, strict=True)], metrics

    def _value(self, fn: RewardFunction, result: float | Failure | None) -> float | None:
        """The sample's value from ``fn``: its result, or ``failure_reward`` (logged once) if it failed."""
        if not isinstance(result, Failure):
            return result
        if (fn.name, result.kind) not in self._logged:
            self._logged.add((fn.name, result.kind))
            logger.error(
                "reward function %r (%s) %s; such samples get failure_reward=%s. Logged once: later "
                "'%s' failures of this function only count in the metric reward/%s/errors.",
                fn.name,
                fn.spec,
                result.message,
                self.failure_reward,
                result.kind,
                fn.name,
                exc_info=result.error,
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
