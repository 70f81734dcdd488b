"""Small verifiers environments for tests (no hub, no network): single-turn, multi-turn, tools."""

from __future__ import annotations

import verifiers as vf
from datasets import Dataset

DATA = Dataset.from_list([{"question": "Repeat this letter: e", "answer": "e"}])


def letter_share(completion: vf.Messages, answer: str, **kwargs: object) -> float:
    """Share of the asked letter in the assistant messages' text."""
    text = "".join(str(m["content"] or "") for m in completion if m["role"] == "assistant")
    return sum(c == answer for c in text) / len(text) if text else 0.0


def single_turn() -> vf.Environment:
    return vf.SingleTurnEnv(dataset=DATA, rubric=vf.Rubric(funcs=[letter_share]))


class AgainEnv(vf.MultiTurnEnv):
    """Asks "Again." after each reply, for three replies."""

    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs: object) -> vf.Messages:
        return [vf.UserMessage(content="Again.")]


def multi_turn() -> vf.Environment:
    return AgainEnv(dataset=DATA, rubric=vf.Rubric(funcs=[letter_share]), max_turns=3)


def count_letters(text: str, letter: str) -> int:
    """Counts a letter in a text.

    Args:
        text: the text to search
        letter: the letter to count
    """
    return text.count(letter)


def with_tools() -> vf.Environment:
    rubric = vf.Rubric(funcs=[letter_share])
    return vf.ToolEnv(dataset=DATA, tools=[count_letters], rubric=rubric, max_turns=2)


def two_turns() -> vf.Environment:
    """The learning run's environment: the row's prompt, then "Again." once."""
    return AgainEnv(dataset=DATA, rubric=vf.Rubric(funcs=[letter_share]), max_turns=2)
