"""What a task is: prompts with reference answers, and a verifier that scores completions."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

Prompt = str | list[dict[str, str]]  # plain text, or chat messages as TRL expects


@dataclass(frozen=True)
class Example:
    """One prompt and what a right answer is."""

    prompt: Prompt
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class Task(ABC):
    """A source of examples and an exact verifier (rewards in {0, 1} unless stated otherwise)."""

    name: str = "task"

    @abstractmethod
    def sample(self, n: int, rng: random.Random) -> list[Example]:
        """``n`` training examples drawn with ``rng`` (the trainer owns and checkpoints it)."""

    @abstractmethod
    def reward(self, completion: str, example: Example) -> float:
        """Score one decoded completion (special tokens stripped) against its example."""

    def eval_set(self, n: int, seed: int = 1234) -> list[Example]:
        """A fixed held-out set for accuracy curves."""
        return self.sample(n, random.Random(seed))
