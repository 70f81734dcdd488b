"""Name -> function registries: a config value picks a component by name (``rollout.engine=hf``,
``algorithm.advantage=grpo``) or, where the registry allows it, by path to a user's function
(``algorithm.policy_loss=my_loss.py:fn``), loaded with rlft's one loader
(:func:`rlft.rewards.loader.load_object`) and its error messages.

An entry is a function plus its traits, a small frozen dataclass of facts the rest of rlft asks
about (validation: "does this estimator need groups of 2+?"; the learner: "does it need a
critic?"). Registered functions declare them in the decorator (``@register_advantage("gae",
needs_critic=True)``); a function loaded by path takes them from its ``traits`` attribute, else
the defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from rlft.shipped import SHIPPED_ROOT

F = TypeVar("F", bound=Callable)
T = TypeVar("T")


@dataclass(frozen=True)
class NoTraits:
    """Traits of the registries whose entries need nothing beyond their arguments."""


class Registry(dict[str, Callable], Generic[T]):
    """A dict of named functions with a decorator to add one (and its traits), and a getter that
    also loads `path/file.py:fn` or `module:fn` specs, with a helpful error for unknown names."""

    def __init__(
        self,
        config_key: str,
        traits_type: type[T] = NoTraits,
        *,
        by_path: bool = True,
        arguments: tuple[str, ...] = (),
        keywords: tuple[str, ...] = (),
    ) -> None:
        """``by_path``: ``path/file.py:fn`` specs are loaded (else only registered names exist);
        a loaded function must accept the positional ``arguments`` and the keyword ``keywords``
        (checked when it is loaded)."""
        super().__init__()
        self.by_path = by_path
        self.arguments, self.keywords = arguments, keywords
        self.config_key = config_key
        self.traits_type = traits_type
        self._traits: dict[str, T] = {}

    def register(self, name: str, **traits: Any) -> Callable[[F], F]:
        """Decorator adding ``fn`` under ``name`` with ``traits`` (fields of the traits type)."""
        declared = self.traits_type(**traits)

        def decorator(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.config_key} {name!r} is already registered")
            self[name] = fn
            self._traits[name] = declared
            return fn

        return decorator

    def lookup(self, name: str) -> Callable:
        """The function registered as ``name``, or loaded from the spec ``name`` when it holds a ':'."""
        if self.by_path and is_spec(name):
            fn = _load(name, self.config_key, Path.cwd())[0]
            self._check_call_shape(name, fn)
            return fn
        if name not in self:
            yours = ", or a function of yours as path/to/file.py:function" if self.by_path else ""
            raise ValueError(f"unknown {self.config_key} {name!r}; known: {', '.join(sorted(self))}{yours}")
        return self[name]

    def _check_call_shape(self, spec: str, fn: Callable) -> None:
        """A TypeError naming the spec and the expected call if ``fn`` cannot take the arguments."""
        try:
            inspect.signature(fn).bind(*self.arguments, **dict.fromkeys(self.keywords))
        except TypeError as error:
            keywords = "".join(f", {k}=..." for k in self.keywords)
            raise TypeError(
                f"{self.config_key} spec {spec!r}: {getattr(fn, '__name__', spec)}{inspect.signature(fn)} "
                f"cannot be called as fn({', '.join(self.arguments)}{keywords}) ({error}); write it "
                'with that signature (README, "Write your own loss")'
            ) from error

    def traits(self, name: str) -> T:
        """The traits of ``name``: declared when registered, else the loaded function's ``traits``
        attribute, else the defaults."""
        if name in self._traits:
            return self._traits[name]
        traits = getattr(self.lookup(name), "traits", self.traits_type())
        if not isinstance(traits, self.traits_type):
            raise TypeError(
                f"{self.config_key}={name}: its 'traits' attribute is a {type(traits).__name__}; "
                f"set it to {self.traits_type.__module__}.{self.traits_type.__name__}(...)"
            )
        return traits


def is_spec(name: str) -> bool:
    """Whether a config value names a function by path or module (``file.py:fn``, ``pkg.mod:fn``)."""
    return ":" in name


def absolute_spec(name: str, config_key: str) -> str:
    """``name`` with a relative file path made absolute (what a process elsewhere can load);
    registry names unchanged. Raises the loader's errors for a bad spec."""
    if not is_spec(name):
        return name
    return _load(name, config_key, Path.cwd())[1]


@cache
def _load(spec: str, config_key: str, cwd: Path) -> tuple[Callable, str]:
    """Load a user's function once per process (and directory ``cwd``, against which a relative
    path resolves first), with the reward functions' loader and errors; returns it and its spec
    with an absolute file path."""
    from rlft.rewards.loader import load_object

    return load_object(spec, config_key, search_dirs=[SHIPPED_ROOT])
