"""Load a user's reward function from ``path/to/file.py:function`` or ``module.sub:function``.

The function's signature picks its calling convention (``async def`` works in every form):

- batch: ``fn(prompts, completions, **columns) -> list[float | None]``
- per sample: ``fn(prompt, completion, **columns) -> float | None``
- verl: ``compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict``

Loading fails at once with a message naming the spec and the fix. Calling a loaded
:class:`RewardFunction` never raises because of the user's code: each sample's result is a float,
``None`` ("no opinion") or a :class:`Failure` saying what went wrong.

The verl form is an adapter: ``solution_str`` is the completion, ``ground_truth`` the sample's
``ground_truth`` column (else its ``answer`` column), ``data_source`` and ``extra_info`` the
columns of those names (``""`` and ``None`` when absent); a returned dict gives its ``"score"``.

:meth:`RewardFunction.with_params` binds constant keyword arguments (``reward.params``), which
then no longer count as required dataset columns.
"""

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import re
import reprlib
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

Form = Literal["batch", "sample", "verl"]

ACCEPTED_FORMS = (
    "  fn(prompts, completions, **columns) -> list[float | None]   (batch)\n"
    "  fn(prompt, completion, **columns) -> float | None           (per sample)\n"
    "  compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict   (verl)"
)
_FORM_BY_FIRST_PARAMS: dict[tuple[str, ...], Form] = {
    ("prompts", "completions"): "batch",
    ("prompt", "completion"): "sample",
}
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class Failure:
    """Why a reward function gave no usable value for a sample."""

    kind: str
    """'raised', 'wrong length', 'non-number', 'timeout' or 'crashed' (its worker process died)."""
    message: str
    trace: str = ""
    """The traceback of the exception the function raised, as text (it crosses processes)."""

    @classmethod
    def raised(cls, error: BaseException) -> "Failure":
        """The failure of a call that raised ``error`` (call from its ``except`` block)."""
        return cls("raised", f"raised {type(error).__name__}: {error}", traceback.format_exc())


@dataclass
class RewardFunction:
    """A loaded reward function plus what its signature says about how to call it."""

    name: str
    """The function's ``__name__`` (the manager makes it unique); used in metric names."""
    spec: str
    fn: Callable[..., Any]
    form: Form
    required_columns: set[str]
    """Dataset columns it needs: its keyword parameters without defaults (none for the verl form)."""
    accepts_any_columns: bool
    """It has ``**kwargs``, so it receives every column."""
    parameters: frozenset[str]
    """Names of its named parameters; other columns are not passed to it."""
    source: str = ""
    """The spec with a file path made absolute: what a worker process loads."""
    params: dict[str, Any] = field(default_factory=dict)
    """Constant keyword arguments (``reward.params``), passed to every call; they win over columns."""

    def with_params(self, params: Mapping[str, Any]) -> "RewardFunction":
        """A copy that passes ``params`` as keyword arguments; an unknown name is a ValueError."""
        reserved = {"prompt", "prompts", "completion", "completions", "solution_str"}
        own = sorted(self.parameters - reserved)
        unknown = sorted(k for k in params if k in reserved or not (k in own or self.accepts_any_columns))
        if unknown:
            raise ValueError(
                f"reward.params.{self.name} sets {unknown}, which {self.name!r} ({self.spec}) does not "
                f"take; its parameters are {own}. Fix the name, or add the parameter to the function."
            )
        required = self.required_columns.difference(params)
        return replace(self, params={**self.params, **params}, required_columns=required)

    def __call__(
        self, prompts: list[str], completions: list[str], columns: dict[str, list]
    ) -> list[float | Failure | None]:
        """Score the samples in this thread, without timeouts: one value per prompt, never raising.

        The reward manager runs :meth:`calls` concurrently instead; this is the plain version.
        """
        calls = self.calls(prompts, completions, columns)
        if self.is_async:
            return [value for values in asyncio.run(self._gather(calls)) for value in values]
        return [value for kwargs in calls for value in self.run(kwargs)]

    def calls(
        self, prompts: list[str], completions: list[str], columns: dict[str, list]
    ) -> list[dict[str, Any]]:
        """Keyword arguments of each call: one call for the batch form, one per sample otherwise."""
        if self.form == "batch":
            return [
                {**self._accepted(columns), **self.params, "prompts": prompts, "completions": completions}
            ]
        return [self._sample_kwargs(i, prompts, completions, columns) for i in range(len(prompts))]

    def samples_in(self, kwargs: dict[str, Any]) -> int:
        """How many samples the call with ``kwargs`` scores."""
        return len(kwargs["prompts"]) if self.form == "batch" else 1

    def run(self, kwargs: dict[str, Any]) -> list[float | Failure | None]:
        """Make one (sync) call and check its output: one value per sample it scores."""
        try:
            output = self.fn(**kwargs)
        except Exception as error:
            output = Failure.raised(error)
        return self._check(output, kwargs)

    async def arun(self, kwargs: dict[str, Any]) -> list[float | Failure | None]:
        """Await one call of an ``async def`` function and check its output."""
        try:
            output = await self.fn(**kwargs)
        except Exception as error:
            output = Failure.raised(error)
        return self._check(output, kwargs)

    def _check(self, output: Any, kwargs: dict[str, Any]) -> list[float | Failure | None]:
        """The call's output as checked values, one per sample it scores."""
        outputs = _split_batch(output, self.samples_in(kwargs)) if self.form == "batch" else [output]
        return [self._to_value(out) for out in outputs]

    @property
    def is_async(self) -> bool:
        """Whether ``fn`` is an ``async def`` function."""
        return inspect.iscoroutinefunction(self.fn)

    def _accepted(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments ``fn`` accepts."""
        if self.accepts_any_columns:
            return kwargs
        return {key: value for key, value in kwargs.items() if key in self.parameters}

    def _sample_kwargs(
        self, i: int, prompts: list[str], completions: list[str], columns: dict[str, list]
    ) -> dict[str, Any]:
        """Keyword arguments of the per-sample or verl call for sample ``i``."""
        row = {key: values[i] for key, values in columns.items()}
        if self.form == "sample":
            return {**self._accepted(row), **self.params, "prompt": prompts[i], "completion": completions[i]}
        verl = {
            "data_source": row.get("data_source", ""),
            "solution_str": completions[i],
            "ground_truth": row.get("ground_truth", row.get("answer")),
            "extra_info": row.get("extra_info"),
        }
        return {**self._accepted(verl), **self.params}

    async def _gather(self, calls: list[dict[str, Any]]) -> list[list[float | Failure | None]]:
        """Await all calls of the async ``fn`` concurrently."""
        return await asyncio.gather(*(self.arun(kwargs) for kwargs in calls))

    def _to_value(self, output: Any) -> float | Failure | None:
        """Check one sample's output: a finite number (as float), None, or else a Failure."""
        if output is None or isinstance(output, Failure):
            return output
        if self.form == "verl" and isinstance(output, Mapping):
            output = output.get("score", output)
        if isinstance(output, bool) or not isinstance(output, numbers.Real) or not math.isfinite(output):
            return Failure("non-number", f"returned {reprlib.repr(output)}, not a finite number or None")
        return float(output)


def _split_batch(output: Any, n: int) -> list[Any]:
    """A batch call's output as one entry per sample; a failed or malformed batch fails every sample."""
    if isinstance(output, Failure):
        return [output] * n
    if isinstance(output, np.ndarray):
        output = output.tolist()
    if isinstance(output, (list, tuple)) and len(output) == n:
        return list(output)
    got = f"{len(output)} values" if isinstance(output, (list, tuple)) else f"a {type(output).__name__}"
    return [Failure("wrong length", f"returned {got} for {n} samples, not one value per sample")] * n


def load_reward_function(spec: str, *, search_dirs: Sequence[Path] = ()) -> RewardFunction:
    """Load the reward function named by ``spec`` and detect its calling convention.

    Args:
        spec: ``path/to/file.py:function`` (relative paths are tried against the current directory,
            then each of ``search_dirs``) or ``module.sub:function`` (imported with importlib).
        search_dirs: further directories for relative file paths, in order.

    Raises:
        ValueError: the spec has no ``:function`` part.
        FileNotFoundError: the file is in none of the places tried (they are listed).
        ImportError: the module or file could not be imported.
        AttributeError: the module has no such name (its callables are listed).
        TypeError: the object is not callable or has none of the accepted signatures.
    """
    fn, source = load_object(spec, "reward", search_dirs=search_dirs)
    return replace(_describe(spec, fn, getattr(fn, "__name__", spec.rpartition(":")[2])), source=source)


def load_object(spec: str, kind: str, *, search_dirs: Sequence[Path] = ()) -> tuple[Callable[..., Any], str]:
    """The callable named by ``spec`` (``path/to/file.py:name`` or ``module.sub:name``) and its
    source (the spec with a file path made absolute, for other processes to load). ``kind`` names
    the extension point in error messages (``reward``, ``agent``, ``environment``...); the errors are
    those listed in :func:`load_reward_function`, the signature check excepted."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(
            f"{kind} function spec {spec!r} must be 'path/to/file.py:function' or 'module.sub:function'"
        )
    path = _find_file(spec, target, search_dirs, kind) if target.endswith(".py") else None
    try:
        module = importlib.import_module(target) if path is None else _import_file(path)
    except Exception as error:
        fix = (
            "Make it importable (install it or add its directory to PYTHONPATH), "
            "or reference the file as path/to/file.py:function."
            if path is None
            else "Fix the error in the file (see the traceback above)."
        )
        raise ImportError(
            f"{kind} spec {spec!r}: importing {target!r} failed: {type(error).__name__}: {error}. {fix}"
        ) from error
    if not hasattr(module, attr):
        available = sorted(name for name, obj in vars(module).items() if callable(obj) and name[0] != "_")
        raise AttributeError(
            f"{kind} spec {spec!r}: {target!r} has no function {attr!r}; its callables are: "
            f"{', '.join(available) or 'none'}. Fix the name after ':'."
        )
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{kind} spec {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn, spec if path is None else f"{path}:{attr}"


def _find_file(spec: str, target: str, search_dirs: Sequence[Path], kind: str) -> Path:
    """The first existing candidate for the file ``target``, resolved."""
    path = Path(target)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, *(Path(d) / path for d in search_dirs)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"{kind} spec {spec!r}: file {target!r} not found; looked at: {', '.join(map(str, candidates))}. "
        "Fix the path before ':' (relative paths are tried against the current directory, then the "
        "search directories)."
    )


def _import_file(path: Path) -> ModuleType:
    """Import a file under a module name unique to its path, so two ``rewards.py`` files don't clash."""
    stem = re.sub(r"\W", "_", path.stem)
    name = f"rlft_reward_{stem}_{hashlib.sha1(bytes(path)).hexdigest()[:10]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up there
    module_spec.loader.exec_module(module)
    return module


def _describe(spec: str, fn: Callable[..., Any], name: str) -> RewardFunction:
    """Wrap ``fn`` with the form and columns its signature declares."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as error:
        raise TypeError(f"reward spec {spec!r}: cannot read the signature of {name!r}: {error}") from error
    named = [p for p in params if p.kind not in _VARIADIC]
    names = [p.name for p in named]
    if "solution_str" in names:
        form, column_params = "verl", []
    elif tuple(names[:2]) in _FORM_BY_FIRST_PARAMS:
        form, column_params = _FORM_BY_FIRST_PARAMS[tuple(names[:2])], named[2:]
    else:
        raise TypeError(
            f"reward spec {spec!r}: {name}{inspect.signature(fn)} has none of the accepted forms; "
            f"write it as one of:\n{ACCEPTED_FORMS}"
        )
    return RewardFunction(
        name=name,
        spec=spec,
        fn=fn,
        form=form,
        required_columns={p.name for p in column_params if p.default is p.empty},
        accepts_any_columns=any(p.kind is p.VAR_KEYWORD for p in params),
        parameters=frozenset(names),
    )
