"""A task SmolLM2-135M-Instruct learns with RL on a laptop: say which of two digits is larger.

Chosen by measurement (``docs/smol.md``).  Sampled at temperature 1.0 (top-k and top-p off),
the instruct model asked "Which number is larger, 3 or 7? Reply with just the number." after
two worked examples in the chat answers right about 34-45% of the time with a 2-token reply, so
GRPO groups hold both right and wrong answers; 16 on-policy GRPO steps of 32 samples took it to
94% on a held-out set on two CPU cores.  Copying a word, upper-casing it, naming the next
letter, ``<answer>`` tags and one-digit sums all started at 0-8% at temperature 1.0.

The reward reads the **first integer** in the completion: ``"7"``, ``"7."`` and ``"The larger
number is 7"`` score 1 for ``(3, 7)``; ``"3 is smaller than 7"`` scores 0 (its first number is
3), as does a reply with no number.
"""

from __future__ import annotations

import random
import re

from bapo.tasks.base import Example, Task

__all__ = ["LargerNumberTask", "first_integer"]

_INT = re.compile(r"(?<![\d.])-?\d+")
QUESTION = "Which number is larger, {a} or {b}? Reply with just the number."


def first_integer(text: str) -> int | None:
    """The first integer written in ``text`` (``None`` if there is none).

    Digits glued to letters count (``"x7"`` gives 7); a decimal's integer part counts
    (``"7.5"`` gives 7); a minus sign right before the digits counts.
    """
    m = _INT.search(text)
    return int(m.group()) if m else None


def _count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} is out of range: allowed integers >= 0")
    return n


class LargerNumberTask(Task):
    """Two distinct integers in ``[0, high]``; the answer is the larger one.

    ``prompt`` is a chat: an optional system message, ``shots`` worked examples (user question,
    assistant answer; 2 by default, which teaches the reply format), then the question.
    ``max_new_tokens`` is the generation length the starting accuracy was measured with.
    """

    name = "larger-number"
    max_new_tokens = 16

    def __init__(self, high: int = 9, shots: int = 2, system: str | None = None):
        if isinstance(high, bool) or not isinstance(high, int) or not 1 <= high <= 10**6:
            raise ValueError(f"high={high!r} is out of range: allowed integers 1..1000000")
        if isinstance(shots, bool) or not isinstance(shots, int) or not 0 <= shots <= 8:
            raise ValueError(f"shots={shots!r} is out of range: allowed integers 0..8")
        if system is not None and not isinstance(system, str):
            raise ValueError(f"system={system!r} must be a string or None")
        self.high, self.shots, self.system = high, shots, system

    def __repr__(self) -> str:
        return f"LargerNumberTask(high={self.high}, shots={self.shots})"

    def _pair(self, rng: random.Random) -> tuple[int, int]:
        a, b = rng.sample(range(self.high + 1), 2)
        return a, b

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        out = []
        for _ in range(_count(n)):
            messages = [] if self.system is None else [{"role": "system", "content": self.system}]
            for _ in range(self.shots):
                x, y = self._pair(rng)
                messages.append({"role": "user", "content": QUESTION.format(a=x, b=y)})
                messages.append({"role": "assistant", "content": str(max(x, y))})
            a, b = self._pair(rng)
            messages.append({"role": "user", "content": QUESTION.format(a=a, b=b)})
            out.append(Example(prompt=messages, answer=str(max(a, b)), meta={"a": a, "b": b}))
        return out

    def reward(self, completion: str, example: Example) -> float:
        return 1.0 if first_integer(completion) == int(example.answer) else 0.0
