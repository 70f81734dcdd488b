"""A small openenv-core environment for tests: echo the asked letter back, two rounds."""

from __future__ import annotations

from typing import Any

from openenv.core import Action, Environment, Observation, State


class LetterAction(Action):
    message: str


class LetterObservation(Observation):
    text: str = ""


class LetterEnv(Environment):
    def __init__(self) -> None:
        super().__init__()
        self._state = State(step_count=0)
        self.letter = "e"

    def reset(self, seed: int | None = None, episode_id: str | None = None, **row: Any) -> LetterObservation:
        self.letter = row.get("answer", "e")
        self._state = State(episode_id=episode_id, step_count=0)
        return LetterObservation(text=f"Repeat this letter: {self.letter}")

    def step(self, action: LetterAction, timeout_s: float | None = None, **kwargs: Any) -> LetterObservation:
        self._state.step_count += 1
        share = sum(c == self.letter for c in action.message) / max(len(action.message), 1)
        done = self._state.step_count >= 2
        return LetterObservation(text="Again.", reward=share, done=done)

    @property
    def state(self) -> State:
        return self._state
