"""Tasks: exact verifiers, the math data adapter and its errors, the registry."""

import json
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bapo.tasks import TASKS, ArithmeticTask, Example, MathDataTask, make_task
from bapo.tasks.math_data import exact_match, last_boxed, load_rows, math_reward


# ---------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------
def ex(prompt, answer):
    return Example(prompt=prompt, answer=answer)


@pytest.mark.parametrize(
    "a, op, b, answer", [(47, "+", 38, "85"), (12, "-", 47, "-35"), (99, "*", 99, "9801")]
)
def test_arithmetic_hand_computed(a, op, b, answer):
    assert ArithmeticTask.solve(a, op, b) == int(answer)
    task = ArithmeticTask(digits=2, ops="+-*")
    e = ex(f"{a}{op}{b}=", answer)
    assert task.reward(answer, e) == 1.0
    assert task.reward(f"  {answer}\n", e) == 1.0  # surrounding whitespace is stripped
    for wrong in ("0" + answer, answer + "0", answer + " apples", "", str(int(answer) + 1)):
        assert task.reward(wrong, e) == 0.0, wrong


def test_arithmetic_samples_match_their_answers():
    task = ArithmeticTask(digits=3, ops="+-*")
    examples = task.sample(300, random.Random(0))
    assert {e.meta["op"] for e in examples} == {"+", "-", "*"}
    for e in examples:
        a, op, b = e.meta["a"], e.meta["op"], e.meta["b"]
        assert 0 <= a < 1000 and 0 <= b < 1000
        assert e.prompt == f"{a}{op}{b}="
        assert int(e.answer) == eval(f"{a}{op}{b}")  # Python as an independent reference
        assert task.reward(e.answer, e) == 1.0


def test_arithmetic_is_deterministic_in_the_rng():
    task = ArithmeticTask(digits=2, ops="+-")
    assert task.sample(20, random.Random(7)) == task.sample(20, random.Random(7))
    assert task.sample(20, random.Random(7)) != task.sample(20, random.Random(8))
    assert task.eval_set(16) == task.eval_set(16)
    assert ArithmeticTask(ops="++").ops == "+"


@settings(max_examples=200, deadline=None)
@given(
    digits=st.integers(1, 6),
    op=st.sampled_from("+-*"),
    seed=st.integers(0, 2**32 - 1),
    other=st.integers(-(10**13), 10**13),
)
def test_arithmetic_reward_property(digits, op, seed, other):
    task = ArithmeticTask(digits=digits, ops=op)
    (e,) = task.sample(1, random.Random(seed))
    true = ArithmeticTask.solve(e.meta["a"], op, e.meta["b"])
    assert task.reward(str(true), e) == 1.0
    if other != true:
        assert task.reward(str(other), e) == 0.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"digits": 0}, "digits"),
        ({"digits": 7}, "digits"),
        ({"digits": 2.0}, "digits"),
        ({"digits": True}, "digits"),
        ({"ops": ""}, "ops"),
        ({"ops": "+/"}, "ops"),
        ({"ops": ["+"]}, "ops"),
    ],
)
def test_arithmetic_rejects_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ArithmeticTask(**kwargs)


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_sample_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n="):
        ArithmeticTask().sample(n, random.Random(0))


# ---------------------------------------------------------------------------------------------
# Math verifier
# ---------------------------------------------------------------------------------------------
def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{3} then \\boxed{4") == "3"  # an unclosed box is skipped


def test_exact_match_fallback():
    assert exact_match("so \\boxed{42}", "42") == 1.0
    assert exact_match(" 42 ", "42") == 1.0
    assert exact_match("the answer is 42", "42") == 0.0
    assert exact_match("\\boxed{41}", "42") == 0.0
    assert exact_match("\\boxed{7}", "worked out: \\boxed{7}") == 1.0  # gold from a solution


def test_math_reward_uses_math_verify():
    pytest.importorskip("math_verify")
    assert math_reward("so \\boxed{0.5}", "\\frac{1}{2}") == 1.0
    assert math_reward("\\boxed{1+x^2}", "x^2+1") == 1.0
    assert math_reward("\\boxed{0.6}", "\\frac{1}{2}") == 0.0
    assert math_reward("", "3") == 0.0


# ---------------------------------------------------------------------------------------------
# Math data adapter
# ---------------------------------------------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]


def test_jsonl_plain_and_chat_prompts(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "What is 6*7?", "answer": 42, "id": "a"},
            {"prompt": CHAT, "answer": "2"},
            {"prompt": "Half of one?", "answer": "\\frac{1}{2}"},
        ],
    )
    task = make_task("math-jsonl", path=p)
    assert len(task) == 3
    e0, e1, e2 = task.examples
    assert (e0.prompt, e0.answer, e0.meta) == ("What is 6*7?", "42", {"id": "a"})
    assert e1.prompt == CHAT and e1.answer == "2"
    assert task.reward("\\boxed{42}", e0) == 1.0
    assert task.reward("41", e0) == 0.0
    assert task.reward("2", e1) == 1.0
    drawn = task.sample(3, random.Random(0))
    assert sorted(e.answer for e in drawn) == sorted(e.answer for e in task.examples)
    assert len(task.sample(10, random.Random(0))) == 10  # with replacement past the data


def test_solution_column_and_named_column(tmp_path):
    p = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "solution": "so \\boxed{5}.", "x": 9}])
    (e,) = MathDataTask.from_file(p).examples
    assert e.answer == "5"
    (e,) = MathDataTask.from_file(p, answer_column="x").examples
    assert e.answer == "9"


def test_eval_file(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "answer": "1"}])
    held = write_jsonl(
        tmp_path / "e.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(5)]
    )
    task = make_task("math", source=str(train), eval_path=held)
    assert [e.answer for e in task.eval_set(3)] == ["0", "1", "2"]
    assert len(task.eval_set(100)) == 5


def test_jsonl_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        MathDataTask.from_file(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        MathDataTask.from_file(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: malformed JSON"):
        MathDataTask.from_file(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"list.jsonl:1: a row must be a JSON object"):
        MathDataTask.from_file(tmp_path / "list.jsonl")
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_rows(tmp_path / "d.csv")


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([{"question": "a", "answer": "1"}], {}, "missing column.*'prompt'"),
        ([{"prompt": "a", "label": "1"}], {}, "missing column.*'answer' or 'solution'"),
        ([{"prompt": "a", "answer": "1"}], {"answer_column": "gold"}, "missing column.*'gold'"),
        ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], {}, "row 2: missing column 'answer'"),
        ([{"prompt": "", "answer": "1"}], {}, "row 1: 'prompt' is empty"),
        ([{"prompt": 3, "answer": "1"}], {}, "row 1: 'prompt' must be"),
        ([{"prompt": [{"role": "user"}], "answer": "1"}], {}, "row 1: 'prompt' message 0"),
        ([{"prompt": "a", "answer": [1]}], {}, "row 1: column 'answer' must be"),
    ],
)
def test_bad_rows(tmp_path, rows, kwargs, message):
    p = write_jsonl(tmp_path / "r.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        MathDataTask.from_file(p, **kwargs)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "answer": "7"}]), p)
    (e,) = make_task("math-parquet", path=p).examples
    assert (e.prompt, e.answer) == ("q", "7")


def test_hub_name_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ImportError, match="needs the `datasets` package"):
        make_task("math", source="someone/some-math-set")


def test_hub_loader_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    p = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": CHAT, "answer": "2"}, {"prompt": "q", "answer": "3"}]
    )
    task = make_task("math-hf", name="json", data_files=str(p), cache_dir=str(tmp_path / "cache"))
    assert [(e.prompt, e.answer) for e in task.examples] == [(CHAT, "2"), ("q", "3")]


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_make_task():
    task = make_task("arithmetic", digits=3, ops="*")
    assert isinstance(task, ArithmeticTask) and (task.digits, task.ops) == (3, "*")
    with pytest.raises(ValueError, match="unknown task 'sudoku'.*arithmetic.*math-jsonl"):
        make_task("sudoku")
    assert {"arithmetic", "math-jsonl", "math-parquet", "math-hf"} <= set(TASKS)
