"""Real math data as a :class:`~bapo.tasks.base.Task`: rows of ``prompt`` + answer, verified.

Rows come from a local JSONL or Parquet file, or a Hugging Face ``datasets`` name.  A row's
``prompt`` is a plain string or a list of chat messages ``{"role", "content"}`` (as TRL expects);
its answer column is ``answer`` (or ``solution``, whose last ``\\boxed{...}`` is the answer).

Rewards use ``math_verify`` where installed (``1/2`` matches ``\\frac{1}{2}``), and otherwise an
exact match of the completion's last ``\\boxed{...}`` (or the whole stripped completion).
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bapo.tasks.arithmetic import check_count
from bapo.tasks.base import Example, Prompt, Task

__all__ = [
    "ANSWER_COLUMNS",
    "MathDataTask",
    "exact_match",
    "last_boxed",
    "load_rows",
    "math_reward",
    "rows_to_examples",
]

ANSWER_COLUMNS = ("answer", "solution")  # tried in this order when no column is named


# ----------------------------------------------------------------------------------------------
# Verifying
# ----------------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``."""
    starts = [i for key in ("\\boxed{", "\\fbox{") for i in _find_all(text, key)]
    for start in sorted(starts, reverse=True):
        i = text.index("{", start) + 1
        depth, j = 1, i
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip()
            j += 1
    return None  # no closed box


def _find_all(text: str, key: str) -> Iterable[int]:
    i = text.find(key)
    while i != -1:
        yield i
        i = text.find(key, i + 1)


def _gold(answer: str) -> str:
    """The reference answer: the last boxed expression of a worked solution, else the text."""
    boxed = last_boxed(answer)
    return boxed if boxed is not None else answer.strip()


def exact_match(completion: str, answer: str) -> float:
    """1.0 when the last ``\\boxed{...}`` (else the stripped completion) is the answer."""
    boxed = last_boxed(completion)
    guess = boxed if boxed is not None else completion.strip()
    return 1.0 if guess == _gold(answer) else 0.0


def math_reward(completion: str, answer: str) -> float:
    """Score a completion against a reference answer: exact match first, then ``math_verify``."""
    if exact_match(completion, answer):
        return 1.0
    try:
        from math_verify import parse, verify
    except ImportError:
        return 0.0
    # math_verify's timeouts use signal.alarm, which only the main thread may set
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse("\\boxed{" + _gold(answer) + "}", parsing_timeout=timeout)
        guess = parse(completion, parsing_timeout=timeout)
        if not gold or not guess:
            return 0.0
        return 1.0 if verify(gold, guess, timeout_seconds=timeout) else 0.0
    except Exception:  # a verifier failure is a wrong answer, not a crashed run
        return 0.0


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` / ``.json`` (one object per line) or ``.parquet`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"reading {str(path)!r} needs pyarrow: pip install pyarrow") from e
        rows = pq.read_table(path).to_pylist()
    elif suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: malformed JSON row ({e.msg})") from e
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{path}:{lineno}: a row must be a JSON object, got {type(row).__name__}"
                    )
                rows.append(row)
    else:
        raise ValueError(
            f"{str(path)!r}: unsupported file type {suffix!r}: allowed .jsonl, .json, .parquet"
        )
    if not rows:
        raise ValueError(f"{str(path)!r} is empty: no rows")
    return rows


def _check_prompt(prompt: Any, where: str) -> Prompt:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: 'prompt' is empty")
        return prompt
    if isinstance(prompt, (list, tuple)) and prompt:
        messages = []
        for k, m in enumerate(prompt):
            ok = isinstance(m, Mapping) and isinstance(m.get("role"), str)
            if not ok or not isinstance(m.get("content"), str):
                raise ValueError(
                    f"{where}: 'prompt' message {k} must be {{'role': str, 'content': str}}, "
                    f"got {m!r}"
                )
            messages.append({"role": m["role"], "content": m["content"]})
        return messages
    raise ValueError(
        f"{where}: 'prompt' must be a non-empty string or a non-empty list of chat messages, "
        f"got {type(prompt).__name__}"
    )


def rows_to_examples(
    rows: Sequence[Mapping[str, Any]],
    *,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    source: str = "rows",
) -> list[Example]:
    """Check rows and turn them into examples; errors name the source, the row and the column.

    ``answer_column=None`` takes the first of :data:`ANSWER_COLUMNS` the first row has.
    """
    if not rows:
        raise ValueError(f"{source} is empty: no rows")
    first = rows[0]
    label = repr(answer_column)
    if answer_column is None:
        answer_column = next((c for c in ANSWER_COLUMNS if c in first), ANSWER_COLUMNS[0])
        label = " or ".join(repr(c) for c in ANSWER_COLUMNS)
    missing = [repr(prompt_column)] if prompt_column not in first else []
    missing += [label] if answer_column not in first else []
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}; has {list(first)}")
    examples = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i + 1}"
        for col in (prompt_column, answer_column):
            if col not in row or row[col] is None:
                raise ValueError(f"{where}: missing column {col!r}")
        answer = row[answer_column]
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise ValueError(
                f"{where}: column {answer_column!r} must be a string or a number, "
                f"got {type(answer).__name__}"
            )
        meta = {k: v for k, v in row.items() if k not in (prompt_column, answer_column)}
        examples.append(
            Example(_check_prompt(row[prompt_column], where), _gold(str(answer)), meta=meta)
        )
    return examples


class MathDataTask(Task):
    """Math prompts with reference answers, scored by :func:`math_reward`.

    Build it from examples, or with :meth:`load` (a file path or a ``datasets`` name).  ``sample``
    draws without replacement inside one call (with replacement only when ``n`` exceeds the data);
    ``eval_set`` uses ``eval_examples`` when given, else draws from the training rows.
    """

    name = "math"

    def __init__(self, examples: Sequence[Example], eval_examples: Sequence[Example] | None = None):
        if not examples:
            raise ValueError("examples is empty: a task needs at least one example")
        self.examples = list(examples)
        self.eval_examples = list(eval_examples) if eval_examples is not None else None

    def __repr__(self) -> str:
        n_eval = None if self.eval_examples is None else len(self.eval_examples)
        return f"MathDataTask({len(self.examples)} examples, eval={n_eval})"

    def __len__(self) -> int:
        return len(self.examples)

    # loading --------------------------------------------------------------------------------
    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        prompt_column: str = "prompt",
        answer_column: str | None = None,
        eval_path: str | Path | None = None,
    ) -> MathDataTask:
        """From a local ``.jsonl`` or ``.parquet`` file (and optionally a held-out one)."""

        def read(p):
            return rows_to_examples(
                load_rows(p), prompt_column=prompt_column, answer_column=answer_column, source=p
            )

        return cls(read(str(path)), read(str(eval_path)) if eval_path is not None else None)

    @classmethod
    def from_hub(
        cls,
        name: str,
        *,
        config: str | None = None,
        split: str = "train",
        eval_split: str | None = None,
        prompt_column: str = "prompt",
        answer_column: str | None = None,
        **load_kwargs,
    ) -> MathDataTask:
        """From ``datasets.load_dataset(name, config, split=..., **load_kwargs)``.

        Needs the ``datasets`` package, and the network or a local copy of the data.
        """
        try:
            import datasets
        except ImportError as e:
            raise ImportError(
                f"loading the dataset {name!r} by name needs the `datasets` package: "
                "pip install datasets (or pass a local .jsonl/.parquet file)"
            ) from e

        def read(s):
            rows = list(datasets.load_dataset(name, config, split=s, **load_kwargs))
            return rows_to_examples(
                rows,
                prompt_column=prompt_column,
                answer_column=answer_column,
                source=f"{name}[{s}]",
            )

        return cls(read(split), read(eval_split) if eval_split is not None else None)

    @classmethod
    def load(cls, source: str | Path, **kwargs) -> MathDataTask:
        """A file when ``source`` names one (by suffix or because it exists), else a dataset."""
        suffix = Path(str(source)).suffix.lower()
        if suffix in (".jsonl", ".json", ".parquet") or Path(str(source)).expanduser().exists():
            return cls.from_file(source, **kwargs)
        return cls.from_hub(str(source), **kwargs)

    # Task -----------------------------------------------------------------------------------
    def sample(self, n: int, rng: random.Random) -> list[Example]:
        n = check_count(n)
        if n <= len(self.examples):
            return rng.sample(self.examples, n)
        return rng.choices(self.examples, k=n)

    def reward(self, completion: str, example: Example) -> float:
        return math_reward(completion, example.answer)

    def eval_set(self, n: int, seed: int = 1234) -> list[Example]:
        if self.eval_examples is None:
            return super().eval_set(n, seed)
        return self.eval_examples[: check_count(n)]  # all of them when n exceeds their number
