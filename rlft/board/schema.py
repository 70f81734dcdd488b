"""The launch form's fields, read from the config schema (:mod:`rlft.config`): each key's type,
its value in the chosen recipe and its docstring; and the overrides a filled-in form stands for,
checked by the same function as ``rlft train`` (:func:`rlft.cli.load_config`)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import threading
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft import config as config_module
from rlft.cli import CONF_DIR, ConfigError, load_config

BOARD_KEYS = ("trainer.output_dir",)
"""Keys the board sets itself (the run's directory under the board's folder)."""

_compose_lock = threading.Lock()  # Hydra's global state: one composition at a time


@dataclass
class Field:
    key: str
    """Dotted config key, e.g. ``trainer.max_steps``."""
    type: str
    doc: str
    value: str
    """The value in override syntax, as composed for the recipe."""


def recipes() -> list[str]:
    """The recipe names ``recipe=<name>`` accepts: the shipped ones and those in ./recipes."""
    return sorted(
        {p.stem for folder in (CONF_DIR / "recipe", Path("recipes")) for p in folder.glob("*.yaml")}
    )


def _docstrings() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the docstring under the field in rlft/config.py."""
    tree = ast.parse(inspect.getsource(config_module))
    docs = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for field, after in itertools.pairwise(body):
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and is_doc:
                docs[node.name, field.target.id] = " ".join(str(after.value.value).split())
    return docs


def override_value(value: Any) -> str:
    """``value`` in Hydra's override syntax (what ``key=...`` takes on the command line)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def form_fields(recipe: str | None) -> list[Field]:
    """Every leaf key of the schema with its value composed for ``recipe`` (None = the defaults)."""
    with _compose_lock:
        cfg = load_config([f"recipe={recipe}"] if recipe else [])
    docs = _docstrings()
    hints_cache: dict[type, dict[str, Any]] = {}
    fields: list[Field] = []

    def walk(obj: Any, prefix: str) -> None:
        cls = type(obj)
        hints = hints_cache.setdefault(cls, typing.get_type_hints(cls, vars(config_module)))
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, f"{key}.")
            elif key not in BOARD_KEYS:
                kind = hints.get(f.name, f.type)
                type_name = getattr(kind, "__name__", None) if not typing.get_args(kind) else None
                fields.append(
                    Field(
                        key,
                        type_name or str(kind),
                        docs.get((cls.__name__, f.name), ""),
                        override_value(value),
                    )
                )

    walk(cfg, "")
    return fields


def overrides(recipe: str | None, changed: dict[str, str], extra: str, output_dir: str) -> list[str]:
    """The ``rlft train`` arguments of a form: the recipe, the changed fields, the extra
    overrides (whitespace-separated, Hydra syntax) and the run directory."""
    args = [f"recipe={recipe}"] if recipe else []
    args += [f"{key}={value}" for key, value in changed.items()]
    args += extra.split()
    return [*args, f"trainer.output_dir={output_dir}"]


def check(args: list[str]) -> str | None:
    """None if ``rlft train args`` would start, else the error it would print."""
    try:
        with _compose_lock:
            load_config(args)
    except ConfigError as err:
        return f"rlft: config error: {err}"
    return None
