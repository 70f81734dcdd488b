"""Guess the hidden digit: a multi-turn task that one turn cannot solve.

The hidden digit is the row's ``answer`` column (``data.path=builtin:repeat_digit`` has one); the
opening message does not reveal it, so any single-turn policy succeeds 1 time in 10 at best. After
a wrong guess the environment answers with feedback:

- ``feedback="higher_lower"``: "Higher." or "Lower." (binary search solves it in 4 turns);
- ``feedback="reveal"``: "No, it is 7" (the next turn can copy it: the tiny model's task).

Without a digit in the message the answer is "Say one digit." (``reveal``: the digit again).

A guess is the first digit in the assistant's message. Reward: 1 when a guess is right, else 0;
with ``partial_credit=True`` a wrong last message earns the fraction of its non-space characters
that are the hidden digit (a dense signal for tiny models). ``Step.metrics`` report ``solved`` and
``solved_after_feedback`` (solved at a later turn than the first).

    rlft train env.path=envs/guess.py:GuessEnv data.path=builtin:repeat_digit reward.functions=[] ...
"""

from __future__ import annotations

from typing import Any

from rlft.envs import Step


class GuessEnv:
    """One episode of the guessing game (created per episode; ``env.params`` are its arguments)."""

    def __init__(self, feedback: str = "higher_lower", partial_credit: bool = False):
        if feedback not in ("higher_lower", "reveal"):
            raise ValueError(f"GuessEnv: feedback={feedback!r} is not 'higher_lower' or 'reveal'")
        self.feedback, self.partial_credit = feedback, partial_credit
        self.digit, self.solved, self.last, self.turns = "", False, "", 0

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        self.digit = str(row["answer"])
        return [{"role": "user", "content": "Guess my digit (0-9)."}]

    def step(self, message: dict[str, Any]) -> Step:
        self.last, self.turns = message["content"], self.turns + 1
        guess = next((c for c in self.last if c.isdigit()), None)
        if guess == self.digit:
            self.solved = True
            return Step(done=True, metrics={"solved": 1.0, "solved_after_feedback": float(self.turns > 1)})
        if self.feedback == "reveal":
            reply = f"No, it is {self.digit}"
        elif guess is None:
            reply = "Say one digit."
        else:
            reply = "Higher." if guess < self.digit else "Lower."
        return Step([{"role": "user", "content": reply}], metrics={"solved": 0.0})

    def final_reward(self) -> float:
        if self.solved:
            return 1.0
        if not self.partial_credit:
            return 0.0
        chars = [c for c in self.last if not c.isspace()]
        return sum(c == self.digit for c in chars) / len(chars) if chars else 0.0
