"""The folders rlft ships beside its code: ``conf/``, ``recipes/``, ``rewards/`` and ``envs/``.

In the repository they are top-level folders; ``rlft/_shipped/`` holds one symlink to each, and the
wheel carries the files they point to as package data (pyproject.toml). So :data:`SHIPPED_ROOT` is the
same path in a checkout, an editable install and an installed wheel.

A relative reference (``rewards/gsm8k.py:gsm8k``, ``recipe=grpo_gsm8k``) is looked for in the current
directory first, then here: a user's own file wins over the shipped one.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SHIPPED_ROOT = Path(__file__).resolve().parent / "_shipped"
"""Holds ``conf/``, ``recipes/``, ``rewards/`` and ``envs/`` as the repository lays them out."""

_FILE_SPEC = re.compile(r"^(?P<path>[\w./-]+\.py):\w+$")


def recipe_candidates(name: str, conf_dir: Path) -> list[Path]:
    """Where ``recipe=<name>`` is looked for, in order: ``./recipes/``, then ``recipe/`` of ``conf_dir``."""
    return [Path.cwd() / "recipes" / f"{name}.yaml", conf_dir / "recipe" / f"{name}.yaml"]


def recipe_description(path: Path) -> str:
    """The first line of a recipe's header comment, after Hydra's ``# @package`` directive.

    A line that does not end a sentence gets an ellipsis, as the header goes on.
    """
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@"):
            return text if text.endswith(".") else f"{text} …"
    return ""


def first_config_root(dest: Path, conf_dir: Path, local_recipes: bool) -> None:
    """Make ``dest`` the Hydra config root searched before ``conf_dir``: a user's ``./recipes`` wins.

    ``dest`` gets the primary ``config.yaml`` (Hydra reads it from the first root) and ``recipe/`` with
    ``./recipes/*.yaml`` (with ``local_recipes``, and unless the current directory is the rlft checkout).
    """
    shutil.copyfile(conf_dir / "config.yaml", dest / "config.yaml")
    local = Path.cwd() / "recipes"
    files = sorted(local.glob("*.yaml")) if local_recipes else []
    if not files or local.resolve() == (conf_dir / "recipe").resolve():
        return
    (dest / "recipe").mkdir()
    for path in files:
        shutil.copyfile(path, dest / "recipe" / path.name)


def shipped_files(config: Any) -> list[str]:
    """The relative paths of shipped files that ``path/file.py:name`` values in ``config`` reference.

    ``config`` is a plain container (dicts, lists, strings); every extension point (reward functions,
    environments, ...) is covered, as each is referenced by such a spec.
    """
    paths = {m["path"] for value in _strings(config) if (m := _FILE_SPEC.match(value))}
    return sorted(p for p in paths if not Path(p).is_absolute() and (SHIPPED_ROOT / p).is_file())


def _strings(node: Any) -> Iterator[str]:
    """Every string in a nest of dicts and lists."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)
