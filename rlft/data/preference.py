"""Preference datasets (DPO family, KTO): tokenized once at start, drawn in a seeded order.

``data.path`` is read like a prompt dataset (a local jsonl/parquet/csv file or a hub dataset name,
with the same ``data.columns`` renames, ``data.prompt_template`` and train/eval splits, see
:mod:`rlft.data.prompts`), or names a built-in preference set, ``builtin:<name>`` (see
:data:`TASKS`; its evaluation rows come from ``data.eval_fraction``). Columns come from the
config: ``data.prompt_column``, ``data.chosen_column`` and ``data.rejected_column`` for paired
losses, ``data.completion_column`` and ``data.label_column`` (a bool: desirable or not) for
unpaired ones (KTO). Unpaired losses also
take paired data: each pair then gives a desirable (chosen) and an undesirable (rejected) example.

A response is either

- plain text, appended to the prompt formatted as for online training (chat template or raw), or
- a list of chat messages: the conversation minus its last, assistant message is the prompt,
  rendered with the tokenizer's chat template; that last message's content is the completion.
  A single-message response answers the prompt column (a message list, or text taken as one user
  message); a longer one holds its whole conversation and needs no prompt column.

Every completion ends with the EOS token. An example whose prompt is over
``model.max_prompt_tokens`` is left out and counted (``data.on_too_long=filter``) or is an error.
Completions are cut to ``max_completion_tokens``: the preference trainer passes
``rollout.sampling.max_new_tokens``, since offline training has no sampler and the rollout's
completion-length limit doubles as the training one. Cut completions are counted and logged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlft.config import DataConfig
from rlft.data.prompts import (
    PromptSampler,
    format_prompt,
    holdout_indices,
    prepare_row,
    read_split,
    report_too_long,
)

logger = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass
class PreferencePair:
    """A prompt with a preferred and a dispreferred completion (token ids, EOS included)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class UnpairedExample:
    """A prompt with one completion labelled desirable or undesirable (KTO)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool


Example = PreferencePair | UnpairedExample


@dataclass
class PreferenceDataset:
    """The tokenized examples of a preference dataset."""

    examples: list[PreferencePair] | list[UnpairedExample]
    num_truncated: int
    """Completions longer than ``max_completion_tokens``, cut to that length."""
    num_filtered_too_long: int = 0
    """Examples left out because their prompt is over ``max_prompt_tokens``."""


def repeat_digit(rng: random.Random, size: int = 1024) -> list[Row]:
    """``Repeat this digit: 7``: chosen ``7 7 7 7``, rejected four random other digits. The
    preference form of the online ``builtin:repeat_digit`` task; a tiny random model learns it
    within a few dozen DPO steps on a CPU."""
    rows = []
    for _ in range(size):
        digit = rng.randrange(10)
        others = [str(d) for d in range(10) if d != digit]
        rows.append(
            {
                "prompt": f"Repeat this digit: {digit}",
                "chosen": " ".join([str(digit)] * 4),
                "rejected": " ".join(rng.choice(others) for _ in range(4)),
            }
        )
    return rows


TASKS: dict[str, Callable[[random.Random], list[Row]]] = {"repeat_digit": repeat_digit}
"""Built-in preference sets (``data.path=builtin:<name>``): fixed rows, generated from seed 0."""


def load_preference_data(
    cfg: DataConfig,
    tokenizer: Any,
    unpaired: bool,
    max_prompt_tokens: int,
    max_completion_tokens: int,
    split: str = "train",
) -> PreferenceDataset:
    """Read, check and tokenize every row of the ``train`` or ``eval`` split; errors name the
    config key to fix."""
    rows, columns = _read_rows(cfg, split)
    paired_data = {cfg.chosen_column, cfg.rejected_column} <= set(columns)
    if unpaired and cfg.completion_column not in columns and paired_data:
        rows = [
            {**row, cfg.completion_column: row[column], cfg.label_column: label}
            for row in rows
            for column, label in ((cfg.chosen_column, True), (cfg.rejected_column, False))
        ]
        columns = [*columns, cfg.completion_column, cfg.label_column]
    keys = ["completion_column", "label_column"] if unpaired else ["chosen_column", "rejected_column"]
    _require(cfg, columns, *keys)
    response_columns = [cfg.completion_column] if unpaired else [cfg.chosen_column, cfg.rejected_column]

    prompts, completions = [], []
    for i, row in enumerate(rows):
        split = [_split(cfg, columns, tokenizer, row, column) for column in response_columns]
        if any(prompt != split[0][0] for prompt, _ in split):
            raise ValueError(
                f"row {i} of data.path={cfg.path!r}: the chosen and rejected conversations differ "
                "before their last message; a pair must share its prompt"
            )
        prompts.append(split[0][0])
        completions += [completion for _, completion in split]

    # Prompts are rendered already: tokenize them as they are.
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    fits = [len(ids) <= max_prompt_tokens for ids in prompt_ids]
    num_filtered = report_too_long(cfg, fits, f"the {split} split of {cfg.path!r}", max_prompt_tokens)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    completion_ids = [ids + eos for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]
    num_truncated = sum(len(ids) > max_completion_tokens for ids in completion_ids)
    if num_truncated:
        logger.warning(
            "%d of %d completions are longer than rollout.sampling.max_new_tokens=%d tokens and were cut",
            num_truncated,
            len(completion_ids),
            max_completion_tokens,
        )
    completion_ids = [ids[:max_completion_tokens] for ids in completion_ids]

    if unpaired:
        examples: list[Any] = [
            UnpairedExample(p, c, _label(cfg, row[cfg.label_column]))
            for p, c, row, ok in zip(prompt_ids, completion_ids, rows, fits, strict=True)
            if ok
        ]
    else:
        examples = [
            PreferencePair(p, c, r)
            for p, c, r, ok in zip(prompt_ids, completion_ids[0::2], completion_ids[1::2], fits, strict=True)
            if ok
        ]
    return PreferenceDataset(examples, num_truncated, num_filtered)


class ExampleSampler(PromptSampler):
    """Draws dataset indices in :class:`PromptSampler`'s seeded order, epoch after epoch;
    ``state_dict``/``load_state_dict`` make a resumed run draw what an uninterrupted one would."""

    def __init__(self, num_examples: int, seed: int) -> None:
        # Not PromptSampler.__init__, which loads a table: here the table is the list of indices.
        self.seed, self.consumed, self._table = seed, 0, range(num_examples)
        self._rows = self._stream()


def _read_rows(cfg: DataConfig, split: str) -> tuple[list[Row], list[str]]:
    """The rows of the ``train`` or ``eval`` split (columns renamed, template applied) and their
    column names."""
    if cfg.path.startswith("builtin:"):
        name = cfg.path.removeprefix("builtin:")
        if name not in TASKS:
            raise ValueError(
                f"unknown built-in preference set 'builtin:{name}'; known: {', '.join(sorted(TASKS))}"
            )
        rows = TASKS[name](random.Random(0))
        if split == "eval" and cfg.eval_fraction == 0:
            raise ValueError(f"data.path={cfg.path!r}: set data.eval_fraction to hold out evaluation pairs")
        if cfg.eval_fraction > 0:
            train, held_out = holdout_indices(len(rows), cfg.eval_fraction, cfg.eval_seed)
            rows = [rows[i] for i in (train if split == "train" else held_out)]
    else:
        rows = read_split(cfg, split)
    source = cfg.eval_path if split == "eval" and cfg.eval_path is not None else cfg.path
    rows = [prepare_row(cfg, row, source) for row in rows]
    return rows, list(rows[0])


def _require(cfg: DataConfig, columns: list[str], *keys: str) -> None:
    """Raise naming the first ``data.<key>`` whose column the dataset lacks."""
    for key in keys:
        if getattr(cfg, key) not in columns:
            raise ValueError(
                f"data.{key}={getattr(cfg, key)!r} is not a column of data.path={cfg.path!r}; its "
                f"columns are {columns}. Set data.{key} to the column holding it."
            )


def _split(cfg: DataConfig, columns: list[str], tokenizer: Any, row: Row, column: str) -> tuple[str, str]:
    """(formatted prompt, completion text) of one response of ``row``."""
    response = row[column]
    if isinstance(response, str):
        _require(cfg, columns, "prompt_column")
        return format_prompt(tokenizer, row[cfg.prompt_column], cfg), response
    if len(response) == 1:  # only the answer: the conversation so far is in the prompt column
        _require(cfg, columns, "prompt_column")
        prompt = row[cfg.prompt_column]
        response = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt) + response
    if response[-1]["role"] != "assistant":
        raise ValueError(
            f"data.path={cfg.path!r}: the last message of a {column!r} conversation is a "
            f"{response[-1]['role']!r} message; it must be the assistant's response"
        )
    if tokenizer.chat_template is None:
        raise ValueError(
            "chat-message preference data needs a tokenizer with a chat template; "
            "set model.tokenizer_path to one that has one"
        )
    prompt = tokenizer.apply_chat_template(response[:-1], add_generation_prompt=True, tokenize=False)
    return prompt, response[-1]["content"]


def _label(cfg: DataConfig, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(
            f"data.label_column={cfg.label_column!r} must hold booleans (true = desirable); got {value!r}"
        )
    return value
