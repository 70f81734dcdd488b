"""Prompt datasets: where prompts come from, which rows are for training and which for
evaluation, in what order they are drawn, and how they become token ids.

A source (``data.path``, or ``data.eval_path`` for evaluation) is a built-in task
(``builtin:<name>``, generated, see :mod:`rlft.data.tasks`), a local jsonl/parquet/csv file, or a
hub dataset name read through ``datasets``. Every row goes through the same steps when it is read:

1. ``data.columns`` renames columns (``{new name: dataset column}``);
2. ``data.prompt_template`` (if set) builds the prompt column from the row's columns;
3. with a tokenizer, a prompt over ``model.max_prompt_tokens`` (after the chat template) is left
   out and counted (``data.on_too_long=filter``) or stops the run (``error``).

Evaluation rows (:func:`load_prompt_rows` with ``split="eval"``) come from ``data.eval_split`` of
the hub dataset, from ``data.eval_path``, from a seeded hold-out of the training split
(``data.eval_fraction``; the training sampler then never draws them) or, for a built-in task, from
``data.eval_size`` rows generated with ``data.eval_seed``.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.config import DataConfig
from rlft.data.tasks import builtin_task

logger = logging.getLogger(__name__)

Row = dict[str, Any]

_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

EVAL_SEED_OFFSET = 1_000_000_007
"""Added to ``data.eval_seed`` for built-in evaluation rows, so that they do not repeat the training
stream when ``data.eval_seed`` equals ``trainer.seed`` (both 0 by default)."""

MAX_TOO_LONG_IN_A_ROW = 1000
"""A built-in task whose generated prompts are this many times in a row too long stops the run."""

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")


@dataclass
class PromptRows:
    """The rows of one split, ready to be prompted: columns renamed, template applied, too-long
    prompts left out."""

    rows: list[Row]
    columns: list[str]
    num_filtered_too_long: int
    """Rows whose prompt was over ``model.max_prompt_tokens`` and were left out."""


def is_file_source(path: str) -> bool:
    """Whether ``path`` names a local data file (by its suffix) rather than a hub dataset."""
    return Path(path).suffix in _FILE_FORMATS


def has_eval_split(cfg: DataConfig) -> bool:
    """Whether the config asks for evaluation rows (see :func:`load_prompt_rows`)."""
    if cfg.path.startswith("builtin:") and cfg.eval_path is None:
        return cfg.eval_size > 0
    return cfg.eval_fraction > 0 or cfg.eval_split is not None or cfg.eval_path is not None


def load_prompt_rows(
    cfg: DataConfig, split: str, tokenizer: Any = None, max_prompt_tokens: int | None = None
) -> PromptRows:
    """Every row of the ``train`` or ``eval`` split in a fixed order, prepared as the module
    docstring says (too-long prompts are only checked when ``tokenizer`` and
    ``max_prompt_tokens`` are given). Errors name the ``data.*`` key to fix."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: expected 'train' or 'eval'")
    source = cfg.eval_path if split == "eval" and cfg.eval_path is not None else cfg.path
    if source.startswith("builtin:"):
        if split == "train":
            raise ValueError(f"{source!r} is an endless generated task; draw from it with PromptSampler")
        if cfg.eval_size <= 0:
            raise ValueError(
                f"{source!r} is a generated task: set data.eval_size=<rows> to evaluate on "
                "that many rows generated with data.eval_seed"
            )
        stream = builtin_task(source.removeprefix("builtin:"), cfg.eval_seed + EVAL_SEED_OFFSET, "eval")
        raw = list(itertools.islice(stream, cfg.eval_size))
    else:
        raw = read_split(cfg, split)
    rows = [prepare_row(cfg, row, source) for row in raw]
    columns = list(rows[0]) if rows else []
    check_prompt_column(cfg, columns, source)
    num_filtered = 0
    if tokenizer is not None and max_prompt_tokens is not None:
        fits = prompts_fit(tokenizer, [r[cfg.prompt_column] for r in rows], cfg, max_prompt_tokens)
        num_filtered = report_too_long(cfg, fits, f"the {split} split of {source!r}", max_prompt_tokens)
        rows = [row for row, ok in zip(rows, fits, strict=True) if ok]
    return PromptRows(rows, columns, num_filtered)


def read_split(cfg: DataConfig, split: str) -> list[Row]:
    """The raw rows (before renaming) of the ``train`` or ``eval`` split of a file or hub source."""
    if split == "eval" and cfg.eval_path is not None:
        rows = _read_source(cfg.eval_path, cfg.eval_split or "test", cfg.subset, "data.eval_path")
    elif split == "eval" and cfg.eval_split is not None:
        if is_file_source(cfg.path):
            raise ValueError(
                f"data.eval_split={cfg.eval_split!r}: data.path={cfg.path!r} is a file, which has one "
                "split; set data.eval_path=<eval file> or data.eval_fraction=<share to hold out>"
            )
        rows = _read_source(cfg.path, cfg.eval_split, cfg.subset, "data.path")
    elif split == "eval" and cfg.eval_fraction == 0:
        raise ValueError(
            "no evaluation split: set data.eval_split (a hub dataset's split), data.eval_path "
            "(a file or hub dataset) or data.eval_fraction (hold out part of the training split)"
        )
    else:
        rows = _read_source(cfg.path, cfg.split, cfg.subset, "data.path")
        if cfg.eval_fraction > 0:
            train, held_out = holdout_indices(len(rows), cfg.eval_fraction, cfg.eval_seed)
            rows = [rows[i] for i in (train if split == "train" else held_out)]
    if split == "eval" and 0 < cfg.eval_size < len(rows):
        keep = sorted(random.Random(cfg.eval_seed).sample(range(len(rows)), cfg.eval_size))
        rows = [rows[i] for i in keep]
    return rows


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) row indices, each in ascending order: a seeded ``fraction`` of ``n``
    rows (at least one) is held out, and at least one row is left for training."""
    num_held_out = max(1, round(fraction * n))
    if num_held_out >= n:
        raise ValueError(f"data.eval_fraction={fraction} of {n} rows leaves no training rows; lower it")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[num_held_out:]), sorted(order[:num_held_out])


def read_rows(src: str, split: str = "train", subset: str | None = None) -> list[Row]:
    """All rows of a local jsonl/parquet/csv file or of a hub dataset's ``split`` (for the
    ``scripts/prepare_*.py`` preparers)."""
    return _read_source(src, split if not is_file_source(src) else "train", subset, "--src")


def write_rows(rows: list[Row], out: str | Path) -> Path:
    """Write ``rows`` as jsonl, or parquet when ``out`` ends in ``.parquet``; returns the path."""
    import pandas as pd

    out = Path(out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"--out {str(out)!r}: write a .jsonl or .parquet file")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        frame.to_json(out, orient="records", lines=True, force_ascii=False)
    return out


def _read_source(path: str, split: str, subset: str | None, key: str) -> list[Row]:
    """All rows of a local file (its one split) or of a hub dataset's ``split``."""
    import datasets

    if is_file_source(path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key}={path!r}: no such file (relative to {Path.cwd()})")
        if key == "data.path" and split != "train":
            raise ValueError(f"data.split={split!r}: data.path={path!r} is a file; its one split is train")
        table = _read_file(Path(path), f"{key}={path!r}")
    else:
        table = datasets.load_dataset(path, subset, split=split)
    if len(table) == 0:
        raise ValueError(f"{key}={path!r} has no rows")
    return table.to_list()


def _read_file(path: Path, where: str) -> Any:
    """A local data file as a ``datasets`` table. A file that cannot be read is a ValueError naming
    it (``where``) and, for text files, the line: empty, not UTF-8, a jsonl line that is not one
    JSON object, or what the csv/json/parquet reader reports."""
    import datasets

    if path.stat().st_size == 0:
        raise ValueError(f"{where}: the file is empty; it needs one row per line (jsonl) or per record")
    if path.suffix in (".jsonl", ".json", ".csv"):
        _check_text_lines(path, where, jsonl=path.suffix == ".jsonl")
    try:
        return datasets.load_dataset(_FILE_FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as err:
        raise ValueError(f"{where} cannot be read as {path.suffix[1:]}: {_innermost(err)}") from err


def _check_text_lines(path: Path, where: str, jsonl: bool) -> None:
    """Every line is UTF-8 and, for jsonl, blank or one JSON object; raises naming the first line
    that is not."""
    rows = 0
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{where}, line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at byte "
                    f"{err.start + 1} of the line); save the file as UTF-8"
                ) from None
            if not jsonl or not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}, line {number}, column {err.colno}: not valid JSON ({err.msg}); each line "
                    "of a .jsonl file is one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{where}, line {number}: a JSON {type(row).__name__}, not an object; each line of a "
                    '.jsonl file is one JSON object such as {"prompt": "..."}'
                )
            rows += 1
    if jsonl and rows == 0:
        raise ValueError(f"{where} has no rows: every line is blank")


def _innermost(err: BaseException) -> str:
    """The deepest cause of ``err`` as ``Type: message`` (the readers wrap the useful error)."""
    while (cause := err.__cause__ or err.__context__) is not None:
        err = cause
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"


def prepare_row(cfg: DataConfig, row: Row, source: str) -> Row:
    """``row`` with ``data.columns`` renamed and ``data.prompt_template`` applied."""
    if cfg.columns:
        missing = {target: src for target, src in cfg.columns.items() if src not in row}
        if missing:
            target, src = next(iter(missing.items()))
            raise ValueError(
                f"data.columns.{target}={src!r}: {source!r} has no column {src!r}; its columns are "
                f"{list(row)}. Map to one of them."
            )
        renamed = {target: row[src] for target, src in cfg.columns.items()}
        row = {k: v for k, v in row.items() if k not in cfg.columns.values()} | renamed
    if cfg.prompt_template is not None:
        row = {**row, cfg.prompt_column: fill_template(cfg.prompt_template, row)}
    return row


def fill_template(template: str, row: Row) -> str:
    """``template`` with each ``{name}`` replaced by ``row[name]``; ``{{``/``}}`` are literal
    braces and anything else (an empty ``{}``, ``{x y}``) stays as it is."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:  # {{ or }}
            return match.group(0)[0]
        if name not in row:
            raise ValueError(
                f"data.prompt_template has the placeholder {{{name}}}, but the rows have no column "
                f"{name!r}; their columns are {list(row)}. (Write {{{{ and }}}} for literal braces.)"
            )
        return str(row[name])

    return _PLACEHOLDER.sub(substitute, template)


def check_prompt_column(cfg: DataConfig, columns: list[str], source: str) -> None:
    if cfg.prompt_column not in columns:
        raise ValueError(
            f"data.prompt_column={cfg.prompt_column!r} is not a column of {source!r}; its columns are "
            f"{columns}. Set data.prompt_column to the column holding prompts (or map one to it with "
            "data.columns, or build it with data.prompt_template)."
        )


def prompts_fit(tokenizer: Any, texts: list[Any], cfg: DataConfig, max_tokens: int) -> list[bool]:
    """Whether each prompt, formatted as the model will see it, is at most ``max_tokens`` tokens."""
    formatted = [format_prompt(tokenizer, t, cfg) for t in texts]
    if not formatted:
        return []
    ids = tokenizer(formatted, add_special_tokens=False)["input_ids"]
    return [len(x) <= max_tokens for x in ids]


def report_too_long(cfg: DataConfig, fits: list[bool], what: str, max_tokens: int) -> int:
    """Count the prompts that do not fit; stop if ``data.on_too_long=error`` or none fits, else
    print how many are left out."""
    num_too_long = fits.count(False)
    if num_too_long and cfg.on_too_long == "error":
        raise ValueError(
            f"{num_too_long} of {len(fits)} prompts of {what} are over model.max_prompt_tokens="
            f"{max_tokens}; raise model.max_prompt_tokens, shorten the prompts, or set "
            "data.on_too_long=filter to leave them out"
        )
    if fits and num_too_long == len(fits):
        raise ValueError(f"every prompt of {what} is over model.max_prompt_tokens={max_tokens}; raise it")
    if num_too_long:
        logger.warning(
            "data/filtered_too_long: left out %d of %d prompts of %s, over model.max_prompt_tokens=%d",
            num_too_long,
            len(fits),
            what,
            max_tokens,
        )
    return num_too_long


class PromptSampler:
    """Draws training rows in a seeded order, epoch after epoch, and remembers how many it drew.

    A row is a dict holding the prompt column and every other dataset column (ground truth etc.),
    which reward functions receive as keyword arguments. Given a tokenizer and
    ``max_prompt_tokens``, rows whose prompt does not fit are left out as they are read
    (:attr:`num_filtered_too_long`; for a built-in task, as they are generated).
    ``state_dict``/``load_state_dict`` make a resumed run draw exactly the rows an uninterrupted
    run would have.
    """

    def __init__(
        self, cfg: DataConfig, seed: int, tokenizer: Any = None, max_prompt_tokens: int | None = None
    ) -> None:
        self.cfg, self.seed, self.consumed = cfg, seed, 0
        self._tokenizer, self._max_tokens = tokenizer, max_prompt_tokens
        self.num_filtered_too_long = 0
        if cfg.path.startswith("builtin:"):
            self._table: Any = None
            self.columns = list(prepare_row(cfg, next(self._task()), cfg.path))
            check_prompt_column(cfg, self.columns, cfg.path)
        else:
            data = load_prompt_rows(cfg, "train", tokenizer, max_prompt_tokens)
            self._table, self.columns = data.rows, data.columns
            self.num_filtered_too_long = data.num_filtered_too_long
        self._rows = self._stream()

    def _task(self) -> Iterator[Row]:
        return builtin_task(self.cfg.path.removeprefix("builtin:"), self.seed)

    def _fitting_task_rows(self) -> Iterator[Row]:
        """A built-in task's rows, prepared, with too-long prompts left out and counted."""
        in_a_row = 0
        for row in self._task():
            row = prepare_row(self.cfg, row, self.cfg.path)
            if self._fits(row):
                in_a_row = 0
                yield row
                continue
            in_a_row += 1
            if self.cfg.on_too_long == "error" or in_a_row == MAX_TOO_LONG_IN_A_ROW:
                report_too_long(self.cfg, [False] * in_a_row, repr(self.cfg.path), self._max_tokens)
            self.num_filtered_too_long += 1

    def _fits(self, row: Row) -> bool:
        if self._tokenizer is None or self._max_tokens is None:
            return True
        return prompts_fit(self._tokenizer, [row[self.cfg.prompt_column]], self.cfg, self._max_tokens)[0]

    def _stream(self) -> Iterator[Row]:
        if self._table is None:
            rows: Iterator[Row] = self._fitting_task_rows()
        else:
            rows = itertools.chain.from_iterable(self._epoch(e) for e in itertools.count())
        return itertools.islice(rows, self.consumed, None)

    def _epoch(self, epoch: int) -> Iterator[Row]:
        order = list(range(len(self._table)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return (self._table[i] for i in order)

    def sample(self, n: int) -> list[Row]:
        """The next ``n`` rows."""
        rows = list(itertools.islice(self._rows, n))
        self.consumed += len(rows)
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = state["consumed"]
        self._rows = self._stream()


def format_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], cfg: DataConfig) -> str:
    """The prompt as the model sees it: text wrapped in the chat template as a user message (or
    raw), or a conversation (a list of ``{"role", "content"}`` messages) rendered by the template."""
    is_conversation = isinstance(prompt, list)
    if not cfg.apply_chat_template:
        if is_conversation:
            raise ValueError(
                "the prompt column holds chat messages, which need data.apply_chat_template=true"
            )
        return prompt
    if tokenizer.chat_template is None:
        raise ValueError(
            "data.apply_chat_template=true but the tokenizer has no chat template; "
            "set data.apply_chat_template=false for a base model"
        )
    messages = list(prompt) if is_conversation else [{"role": "user", "content": prompt}]
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def tokenize_prompts(tokenizer: Any, texts: list[str], cfg: DataConfig, max_tokens: int) -> list[list[int]]:
    """Token ids of each formatted prompt; a prompt over ``max_tokens`` is an error naming the fix
    (the sampler leaves such prompts out when it reads the data, so this is a last check)."""
    ids = [tokenizer(format_prompt(tokenizer, t, cfg), add_special_tokens=False)["input_ids"] for t in texts]
    for text, toks in zip(texts, ids, strict=True):
        if len(toks) > max_tokens:
            raise ValueError(
                f"a prompt is {len(toks)} tokens, over model.max_prompt_tokens={max_tokens}: "
                f"{text[:80]!r}... Raise model.max_prompt_tokens or shorten the prompts."
            )
    return ids
