"""An agent written against the plain ``openai`` client, trained unchanged by rlft
(``agent.path=envs/repeat_agent.py:run``; recipe ``agent_quickstart``).

Two calls in one conversation: the row's prompt ("Repeat this letter: e"), then "Again." after
the model's first reply. The reward is the mean, over both replies, of the share of characters
that are the asked letter (the row's ``answer``). rlft merges the two calls into one trajectory.
"""

from typing import Any

from openai import OpenAI


def share(text: str, char: str) -> float:
    """Fraction of ``text``'s characters that are ``char`` (0 for an empty reply)."""
    return sum(c == char for c in text) / len(text) if text else 0.0


def run(client: OpenAI, row: dict[str, Any]) -> float:
    messages: list[dict[str, Any]] = [{"role": "user", "content": row["prompt"]}]
    scores = []
    for _ in range(2):
        reply = client.chat.completions.create(model="rlft", messages=messages).choices[0].message
        scores.append(share(reply.content or "", row["answer"]))
        messages.append({"role": "assistant", "content": reply.content or ""})
        messages.append({"role": "user", "content": "Again."})
    return sum(scores) / len(scores)
