"""Prompt datasets: where prompts come from, in what order, and how they become token ids."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlft.config import DataConfig
from rlft.data.tasks import builtin_task

_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _load_table(cfg: DataConfig) -> Any:
    """A ``datasets.Dataset`` from a local file or a hub dataset name."""
    import datasets

    path = Path(cfg.path)
    if path.suffix in _FILE_FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"data.path={cfg.path!r}: no such file (relative to {Path.cwd()})")
        return datasets.load_dataset(_FILE_FORMATS[path.suffix], data_files=str(path), split="train")
    return datasets.load_dataset(cfg.path, split=cfg.split)


class PromptSampler:
    """Draws prompt rows in a seeded order, epoch after epoch, and remembers how many it drew.

    A row is a dict holding the prompt column and every other dataset column (ground truth etc.),
    which reward functions receive as keyword arguments. ``state_dict``/``load_state_dict`` make
    a resumed run draw exactly the rows an uninterrupted run would have.
    """

    def __init__(self, cfg: DataConfig, seed: int):
        self.cfg, self.seed, self.consumed = cfg, seed, 0
        if cfg.path.startswith("builtin:"):
            self._table = None
            self.columns = list(next(builtin_task(cfg.path.removeprefix("builtin:"), seed)))
        else:
            self._table = _load_table(cfg)
            self.columns = list(self._table.column_names)
            if len(self._table) == 0:
                raise ValueError(f"data.path={cfg.path!r} has no rows")
        if cfg.prompt_column not in self.columns:
            raise ValueError(
                f"data.prompt_column={cfg.prompt_column!r} is not a column of data.path={cfg.path!r}; "
                f"its columns are {self.columns}. Set data.prompt_column to the column holding prompts."
            )
        self._rows = self._stream()

    def _stream(self) -> Iterator[dict[str, Any]]:
        if self._table is None:
            rows: Iterator[dict[str, Any]] = builtin_task(self.cfg.path.removeprefix("builtin:"), self.seed)
        else:
            rows = itertools.chain.from_iterable(self._epoch(e) for e in itertools.count())
        return itertools.islice(rows, self.consumed, None)

    def _epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        order = list(range(len(self._table)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return (self._table[i] for i in order)

    def sample(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` rows."""
        rows = list(itertools.islice(self._rows, n))
        self.consumed += len(rows)
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = state["consumed"]
        self._rows = self._stream()


def format_prompt(tokenizer: Any, text: str, cfg: DataConfig) -> str:
    """The prompt as the model sees it: wrapped in the chat template, or raw."""
    if not cfg.apply_chat_template:
        return text
    if tokenizer.chat_template is None:
        raise ValueError(
            "data.apply_chat_template=true but the tokenizer has no chat template; "
            "set data.apply_chat_template=false for a base model"
        )
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def tokenize_prompts(tokenizer: Any, texts: list[str], cfg: DataConfig, max_tokens: int) -> list[list[int]]:
    """Token ids of each formatted prompt; a prompt over ``max_tokens`` is an error naming the fix."""
    ids = [tokenizer(format_prompt(tokenizer, t, cfg), add_special_tokens=False)["input_ids"] for t in texts]
    for text, toks in zip(texts, ids, strict=True):
        if len(toks) > max_tokens:
            raise ValueError(
                f"a prompt is {len(toks)} tokens, over model.max_prompt_tokens={max_tokens}: "
                f"{text[:80]!r}... Raise model.max_prompt_tokens or shorten the prompts."
            )
    return ids
