"""Toy arithmetic with an exact verifier: ``"47+38="`` -> ``"85"``.

Small enough that a model of a few hundred thousand parameters learns it on a CPU, and exact, so
every reward is a clean 0 or 1: the setting where BAPO's group statistics are easiest to see.
"""

from __future__ import annotations

import random

from bapo.tasks.base import Example, Task

__all__ = ["OPS", "ArithmeticTask", "check_count"]

OPS = "+-*"
MAX_DIGITS = 6


def check_count(n: int) -> int:
    """``n`` as a count of examples, or ``ValueError`` naming it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} is out of range: allowed integers >= 0")
    return n


class ArithmeticTask(Task):
    """``a<op>b=`` with ``a, b`` uniform in ``[0, 10**digits)`` and ``op`` drawn from ``ops``.

    The answer is the exact integer result in plain decimal (``"-35"``, ``"0"``, ``"3276"``). A
    completion earns 1.0 when, stripped of surrounding whitespace, it equals the answer: ``"085"``,
    ``"+85"`` and ``"85 apples"`` all score 0, ``" 85\\n"`` scores 1.
    """

    name = "arithmetic"

    def __init__(self, digits: int = 2, ops: str = "+"):
        if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= MAX_DIGITS:
            raise ValueError(f"digits={digits!r} is out of range: allowed integers 1..{MAX_DIGITS}")
        if not isinstance(ops, str) or not ops or any(op not in OPS for op in ops):
            raise ValueError(f"ops={ops!r} is not allowed: use a non-empty subset of {OPS!r}")
        self.digits = digits
        self.ops = "".join(dict.fromkeys(ops))  # drop repeats, keep the caller's order

    def __repr__(self) -> str:
        return f"ArithmeticTask(digits={self.digits}, ops={self.ops!r})"

    @staticmethod
    def solve(a: int, op: str, b: int) -> int:
        """The exact result of ``a op b``."""
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        raise ValueError(f"op={op!r} is not allowed: use one of {OPS!r}")

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        hi = 10**self.digits
        out = []
        for _ in range(check_count(n)):
            a, b, op = rng.randrange(hi), rng.randrange(hi), rng.choice(self.ops)
            out.append(
                Example(
                    prompt=f"{a}{op}{b}=",
                    answer=str(self.solve(a, op, b)),
                    meta={"a": a, "op": op, "b": b},
                )
            )
        return out

    def reward(self, completion: str, example: Example) -> float:
        return 1.0 if completion.strip() == example.answer else 0.0
