"""A sequence-classification reward model on its own worker (a Ray actor or in-process)."""

from __future__ import annotations

import logging

import torch

from rlft.config import ModelConfig, RewardModelConfig
from rlft.modeling import DTYPES, default_device, load_tokenizer
from rlft.tiny_model import resolve_model_path

logger = logging.getLogger("rlft.rewards")


class RewardModelWorker:
    """Scores (prompt, completion) pairs with ``AutoModelForSequenceClassification`` (one label).

    Formatting: with a chat template, the pair is the conversation
    ``[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]`` (a
    prompt that is a list of chat messages is the conversation so far) rendered by the reward
    model's own template (so the prompt should be the raw question, not a string the policy's
    template already formatted); without one, the text is the messages' contents + completion.
    The text is tokenized with the tokenizer's special tokens, and its score is the model's logit
    at the last non-padding token (right padding).

    Truncation: a text longer than ``reward.model.max_tokens`` (0 = the model's
    ``max_position_embeddings``) keeps its last ``max_tokens`` tokens, i.e. loses the start of the
    prompt first, since the score is read at the end. The first truncation is logged; the count is
    in :attr:`truncated`.
    """

    def __init__(self, cfg: RewardModelConfig, dtype: str = "float32", num_threads: int = 0):
        from transformers import AutoModelForSequenceClassification

        if num_threads:
            torch.set_num_threads(num_threads)
        self.cfg, self.device = cfg, default_device()
        self.tokenizer = load_tokenizer(ModelConfig(path=cfg.path))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(cfg.path), num_labels=1, dtype=DTYPES[dtype]
        ).to(self.device)
        self.model.eval().config.pad_token_id = self.tokenizer.pad_token_id
        model_limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_tokens: int | None = cfg.max_tokens or model_limit
        """Longest text in tokens the model sees; None = no limit known."""
        self.truncated = 0
        """Texts cut to ``max_tokens`` so far."""

    def _text(self, prompt: str | list[dict[str, str]], completion: str) -> str:
        """A text prompt is one user message; a list of chat messages is the conversation so far."""
        conversation = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.tokenizer.chat_template is None:
            return "".join(m["content"] for m in conversation) + completion
        messages = [*conversation, {"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, cut from the left to ``max_tokens``."""
        ids = self.tokenizer(texts)["input_ids"]
        if self.max_tokens is None:
            return ids
        long = sum(len(x) > self.max_tokens for x in ids)
        if long and not self.truncated:
            logger.warning(
                "reward model: %d of %d texts are longer than %d tokens; they keep their last %d "
                "tokens (set reward.model.max_tokens to change the limit)",
                long,
                len(ids),
                self.max_tokens,
                self.max_tokens,
            )
        self.truncated += long
        return [x[-self.max_tokens :] for x in ids]

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One scalar reward per pair."""
        ids = self._token_ids([self._text(p, c) for p, c in zip(prompts, completions, strict=True)])
        scores: list[float] = []
        size = self.cfg.per_device_samples_per_batch
        self.tokenizer.padding_side = "right"
        for lo in range(0, len(ids), size):
            chunk = {"input_ids": ids[lo : lo + size]}
            batch = self.tokenizer.pad(chunk, return_tensors="pt").to(self.device)
            scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores
