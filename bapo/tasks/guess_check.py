"""Guess-and-check addition: a toy task whose wrong answers are long for a structural reason.

``"3+4="`` -> ``"9? 2? 7!"``: the model proposes a sum, checks it, marks a wrong guess ``?`` and
tries again, and marks the first guess it accepts ``!``.  Only the accepted guess is scored (as
a verifier of LLM reasoning reads the final answer, not the chain of thought).

Why this task exists (BAPO, Section 3 and Figure 6): in LLM reasoning, wrong answers are the
long ones - an unsure model keeps going until the token cap cuts it off, and a cut-off answer is
a wrong one.  The same holds here by construction of the strategy, not by an injected quirk: a
model that checks well but guesses badly runs out of ``max_new_tokens`` before it accepts a
guess, so most wrong completions are exactly cap-long, while right ones stop at the first good
guess.  RL sharpens the *guesses* (the model already knows how to check a sum), so right answers
get shorter as it learns and the wrong ones stay cut off: the negative-token majority that BAPO
corrects (Eq. 8's ``rho`` below ``rho0``) comes from the task itself for the whole run.

The supervised warm start (:mod:`bapo.models`) shows traces that answer at once with probability
``p_direct`` and otherwise make ``min_wrong..max_wrong`` distinct random wrong guesses first: the
model learns to check a sum, and that it sometimes knows the answer outright and otherwise has to
search.  With ``max_new_tokens=12`` (the ``cpu-guess`` preset) a search of two or more wrong
guesses does not fit, so right answers are mostly the short direct ones.
"""

from __future__ import annotations

import random

from bapo.tasks.arithmetic import check_count
from bapo.tasks.base import Example, Task

__all__ = ["GuessCheckTask"]


def _check_int(name: str, value, lo: int, hi: int, why: str = "") -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is out of range: allowed integers {lo}..{hi}{why}")


class GuessCheckTask(Task):
    """``a+b=`` with ``a, b`` uniform in ``0..max_operand``; the completion guesses and checks.

    ``Example.answer`` is one supervised trace: with probability ``p_direct`` the sum at once,
    else ``k`` distinct wrong guesses (``k`` uniform in ``min_wrong..max_wrong``; by default up
    to every other value a sum can take) and then the sum.  ``meta["sum"]`` is what the reward
    checks: 1.0 when the guess before the first ``!`` is the sum, else 0.0 - also for a
    completion cut off before any ``!``.
    """

    name = "guess-check"

    def __init__(
        self,
        max_operand: int = 9,
        max_wrong: int | None = None,
        p_direct: float = 0.25,
        min_wrong: int = 2,
    ):
        _check_int("max_operand", max_operand, 1, 49)
        n_wrong = 2 * max_operand  # the other values a sum can take
        max_wrong = n_wrong if max_wrong is None else max_wrong
        _check_int("max_wrong", max_wrong, 0, n_wrong, " (2 * max_operand)")
        _check_int("min_wrong", min_wrong, 1, max_wrong or n_wrong, " (max_wrong)")
        if (
            isinstance(p_direct, bool)
            or not isinstance(p_direct, (int, float))
            or not (0 <= p_direct <= 1)
        ):
            raise ValueError(f"p_direct={p_direct!r} is out of range: allowed [0, 1]")
        self.max_operand, self.max_wrong, self.p_direct = max_operand, max_wrong, float(p_direct)
        self.min_wrong = min_wrong

    def __repr__(self) -> str:
        return (f"GuessCheckTask(max_operand={self.max_operand}, max_wrong={self.max_wrong}, "
                f"p_direct={self.p_direct}, min_wrong={self.min_wrong})")  # fmt: skip

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        top = 2 * self.max_operand
        out = []
        for _ in range(check_count(n)):
            a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
            s = a + b
            direct = rng.random() < self.p_direct or self.max_wrong == 0
            k = 0 if direct else rng.randint(self.min_wrong, self.max_wrong)
            wrong = rng.sample([g for g in range(top + 1) if g != s], k)
            trace = "".join(f"{g}? " for g in wrong) + f"{s}!"
            out.append(Example(prompt=f"{a}+{b}=", answer=trace,
                               meta={"a": a, "b": b, "sum": s}))  # fmt: skip
        return out

    @staticmethod
    def accepted(completion: str) -> str | None:
        """The guess the completion accepted (the text before the first ``!`` after its last
        space), or ``None`` when it accepted none."""
        if "!" not in completion:
            return None
        return completion.split("!", 1)[0].rsplit(" ", 1)[-1].strip()

    def reward(self, completion: str, example: Example) -> float:
        return 1.0 if self.accepted(completion) == str(example.meta["sum"]) else 0.0
