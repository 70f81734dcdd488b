"""Token-exact multi-turn trajectories from a chat template.

An episode's token sequence is built by appending, never by re-rendering the conversation:

1. the opening: the chat template over the opening messages, with the generation prompt;
2. each model turn: the tokens exactly as the engine sampled them (never decoded and re-tokenized);
3. after it, the template's end of an assistant turn where the model did not produce it (e.g. the
   ``\\n`` that ChatML puts after ``<|im_end|>``, or the whole ``<|im_end|>\\n`` when the turn was cut
   at ``max_new_tokens``): :meth:`ChatRenderer.close_turn`;
4. the environment's messages as the template's *delta*: the render of the conversation with them
   (and the generation prompt) minus the render of the conversation before them, which must be a
   prefix of it (:meth:`ChatRenderer.delta`).

Templates that rewrite earlier turns (one that strips past reasoning when a new user message comes,
like Qwen3's) fail the prefix check. rlft's strategy then: **earlier turns stay as the model saw and
sampled them**, and the new messages are rendered after a fixed neutral history (the conversation's
system messages, one user and one assistant message with no reasoning), whose render the new
messages extend. The trained sequence is thus always what the engine saw; it can differ from what
the template would render for the whole conversation at once (past reasoning kept), and each such
turn is counted (``env/template_rewrites``).
"""

from __future__ import annotations

from typing import Any

SENTINEL = "\x00rlft-assistant-content\x00"
"""Stands for an assistant message's content when reading the template's end of turn."""

NEUTRAL_HISTORY = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]
"""What new messages are rendered after when the template rewrites earlier turns."""


class TemplateError(ValueError):
    """The chat template cannot render the conversation append-only, even after a neutral history."""


class ChatRenderer:
    """Renders a conversation's pieces as token ids with ``tokenizer``'s chat template (or
    ``chat_template``), passing ``tools`` (JSON schemas) to it on every render."""

    def __init__(
        self, tokenizer: Any, tools: list[dict[str, Any]] | None = None, chat_template: str | None = None
    ):
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "environments (env.path) need a chat template: the tokenizer has none; use a model "
                "with one or set model.tokenizer_path to a tokenizer that has one"
            )
        self.tokenizer, self.tools, self.chat_template = tokenizer, tools or None, chat_template

    def text(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=self.tools,
            add_generation_prompt=generation_prompt,
            tokenize=False,
            chat_template=self.chat_template,
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def opening(self, messages: list[dict[str, Any]]) -> list[int]:
        """The opening render with the generation prompt."""
        return self.encode(self.text(messages, generation_prompt=True))

    def close_turn(self, history: list[dict[str, Any]], model_ids: list[int]) -> tuple[list[int], bool]:
        """Tokens the template puts after an assistant message's content that ``model_ids`` (the
        sampled turn, answering ``history``) does not already end with: the end-of-turn suffix
        read off a render with a placeholder content, less its longest start that the model's
        last tokens match (the EOS token the model stopped on). Also whether the template
        rewrote earlier turns."""
        turn = [{"role": "assistant", "content": SENTINEL}]
        base = [m for m in history if m.get("role") == "system"] + NEUTRAL_HISTORY[:1]
        rendered, rewritten = self._extension(history, turn, base, True, False)
        suffix = rendered[rendered.find(SENTINEL) + len(SENTINEL) :] if SENTINEL in rendered else ""
        if not suffix:
            return [], rewritten
        suffix_ids = self.encode(suffix)
        for k in range(min(len(suffix_ids), len(model_ids)), 0, -1):
            if model_ids[-k:] == suffix_ids[:k]:
                return suffix_ids[k:], rewritten
        return suffix_ids, rewritten

    def delta(self, history: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[list[int], bool]:
        """Token ids of the ``new`` messages after ``history`` (which ends with the model's turn),
        with the generation prompt, and whether the template rewrote earlier turns (then the
        neutral-history strategy of this module's docstring was used)."""
        base = [m for m in history if m.get("role") == "system"] + NEUTRAL_HISTORY
        rendered, rewritten = self._extension(history, new, base, False, True)
        return self.encode(rendered), rewritten

    def _extension(
        self,
        history: list[dict[str, Any]],
        new: list[dict[str, Any]],
        neutral: list[dict[str, Any]],
        prompt_before: bool,
        prompt_after: bool,
    ) -> tuple[str, bool]:
        """The text the render of ``history + new`` adds to that of ``history`` (prefix-checked),
        or, where the template rewrites earlier turns, that of ``neutral + new`` over ``neutral``;
        and whether the neutral history was needed."""
        for rewritten, past in ((False, history), (True, neutral)):
            before = self.text(past, generation_prompt=prompt_before)
            after = self.text([*past, *new], generation_prompt=prompt_after)
            if after.startswith(before):
                return after[len(before) :], rewritten
        raise TemplateError(
            "the chat template's render of the conversation does not extend its render before the "
            f"new messages, even after a neutral history; new messages: {new!r}"
        )
