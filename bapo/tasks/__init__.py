"""Tasks: prompts with reference answers and exact verifiers.

``make_task("arithmetic", digits=2, ops="+")`` or ``make_task("math-jsonl", path="data.jsonl")``.
"""

from __future__ import annotations

from collections.abc import Callable

from bapo.tasks.arithmetic import ArithmeticTask
from bapo.tasks.base import Example, Prompt, Task
from bapo.tasks.guess_check import GuessCheckTask
from bapo.tasks.math_data import MathDataTask, math_reward
from bapo.tasks.smol_tasks import LargerNumberTask

__all__ = [
    "TASKS",
    "ArithmeticTask",
    "GuessCheckTask",
    "Example",
    "LargerNumberTask",
    "MathDataTask",
    "Prompt",
    "Task",
    "make_task",
    "math_reward",
]

TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": ArithmeticTask,
    "guess-check": GuessCheckTask,  # wrong answers run to the token cap (cpu-guess)
    "larger-number": LargerNumberTask,  # for SmolLM2-135M (cpu-smollm2)
    "math": MathDataTask.load,  # source=<file or dataset name>
    "math-jsonl": MathDataTask.from_file,  # path=<.jsonl>; the two are one loader by suffix
    "math-parquet": MathDataTask.from_file,  # path=<.parquet>
    "math-hf": MathDataTask.from_hub,  # name=<dataset name>
}


def make_task(name: str, /, **kwargs) -> Task:
    """The task registered as ``name``, built with ``kwargs``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: allowed {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
