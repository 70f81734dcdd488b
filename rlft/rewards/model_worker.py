"""A sequence-classification reward model on its own worker (a Ray actor or in-process)."""

from __future__ import annotations

import torch

from rlft.config import ModelConfig, RewardModelConfig
from rlft.modeling import DTYPES, default_device, load_tokenizer
from rlft.tiny_model import resolve_model_path


class RewardModelWorker:
    """Scores (prompt, completion) pairs with ``AutoModelForSequenceClassification`` (one label).

    The pair is formatted as a user/assistant conversation with the reward model's chat template
    when it has one, else as the prompt followed by the completion.
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

    def _text(self, prompt: str | list[dict[str, str]], completion: str) -> str:
        """A text prompt is one user message; a list of chat messages is the conversation so far."""
        conversation = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.tokenizer.chat_template is None:
            return "".join(m["content"] for m in conversation) + completion
        messages = [*conversation, {"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One scalar reward per pair."""
        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        size = self.cfg.per_device_samples_per_batch
        self.tokenizer.padding_side = "right"
        for lo in range(0, len(texts), size):
            enc = self.tokenizer(texts[lo : lo + size], return_tensors="pt", padding=True).to(self.device)
            scores += self.model(**enc).logits[:, 0].float().tolist()
        return scores
