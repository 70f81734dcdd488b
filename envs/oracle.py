"""A tool-use task: only a tool call reveals the hidden digit.

The row's ``answer`` is the hidden digit; the opening message does not say it. The environment has
one tool, ``oracle()``, that returns it. A message with a tool call gets the tool's answer back; a
message without one is the final answer, scored by the fraction of its non-space characters that
are the digit (1.0 for "7", "77"; the metric ``env/solved`` counts answers whose first digit is
right). Without a tool call the answer is a guess (1 in 10 at best). ``call_reward`` > 0 adds a
turn reward for each turn with a correct call (shaping for models that must discover the call).

Tool calls are read by ``parser``: the Hermes ``<tool_call>`` format by default (real models), or
``"ask"``, which takes a ``?`` anywhere in the message as a call of ``oracle`` (a format the
offline tiny model can discover by sampling; tests/test_envs_training.py trains it).

    rlft train env.path=envs/oracle.py:OracleEnv +env.params.parser=ask data.path=builtin:repeat_digit ...
"""

from __future__ import annotations

from typing import Any

from rlft.envs import Step
from rlft.envs.tools import ToolCall, ToolEnv, hermes_tool_calls


def ask_calls(text: str) -> list[ToolCall]:
    """A ``?`` anywhere in ``text`` calls ``oracle()``."""
    return [ToolCall("oracle", {})] if "?" in text else []


class OracleEnv(ToolEnv):
    def __init__(self, parser: str = "hermes", max_calls: int = 2, call_reward: float = 0.0):
        super().__init__([self.oracle], ask_calls if parser == "ask" else hermes_tool_calls)
        self.digit, self.max_calls, self.calls, self.answer = "", max_calls, 0, ""
        self.call_reward = call_reward

    def oracle(self) -> str:
        """Tell the hidden digit."""
        return self.digit

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        self.digit = str(row["answer"])
        return [{"role": "user", "content": "Which digit am I thinking of? Ask the oracle tool."}]

    def step(self, message: dict[str, Any]) -> Step:
        step = super().step(message)
        self.calls += int(step.metrics.get("tool_calls", 0))
        if step.done or self.calls > self.max_calls:
            self.answer = message["content"]
            guess = next((c for c in self.answer if c.isdigit()), None)
            return Step(done=True, metrics={**step.metrics, "solved": float(guess == self.digit)})
        correct = (
            step.metrics["tool_calls"] - step.metrics["tool_errors"] - step.metrics["malformed_tool_calls"]
        )
        reward = self.call_reward if correct else None  # a turn reward for calling the tool right
        return Step(step.messages, reward, metrics={**step.metrics, "correct_tool_calls": correct})

    def final_reward(self) -> float:
        chars = [c for c in self.answer if not c.isspace()]
        return sum(c == self.digit for c in chars) / len(chars) if chars else 0.0
