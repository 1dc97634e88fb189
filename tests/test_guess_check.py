"""The guess-and-check task: its traces, its verifier, and why its wrong answers run long."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bapo.tasks import GuessCheckTask, make_task


def test_traces_end_with_the_sum_after_distinct_wrong_guesses():
    task = GuessCheckTask()
    examples = task.sample(2000, random.Random(0))
    n_direct = 0
    for e in examples:
        a, b, s = e.meta["a"], e.meta["b"], e.meta["sum"]
        assert e.prompt == f"{a}+{b}=" and s == a + b and 0 <= a <= 9 and 0 <= b <= 9
        *wrong, last = e.answer.split(" ")
        assert last == f"{s}!"
        guesses = [int(w.rstrip("?")) for w in wrong]
        assert all(w.endswith("?") for w in wrong)
        assert len(set(guesses)) == len(guesses) and s not in guesses
        assert all(0 <= g <= 18 for g in guesses) and len(guesses) <= task.max_wrong
        assert task.reward(e.answer, e) == 1.0  # every supervised trace is right
        n_direct += not wrong
    # p_direct of the traces answer at once (binomial: 3 sigma over 2000 draws is ~0.028)
    assert n_direct / len(examples) == pytest.approx(task.p_direct, abs=0.03)


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("7!", 1.0),
        ("3? 9? 7!", 1.0),
        (" 7! 8? 2!", 1.0),  # the first accepted guess counts; what follows is ignored
        ("3? 7? 9!", 0.0),  # rejected the sum, accepted a wrong guess
        ("3? 9? 1? 12? ", 0.0),  # cut off by the token cap before accepting: wrong
        ("3? 9? 17", 0.0),
        ("", 0.0),
        ("07!", 0.0),
        ("x7!", 0.0),
    ],
)
def test_reward_hand_cases(completion, reward):
    task = GuessCheckTask()
    (e,) = [x for x in task.sample(500, random.Random(1)) if x.meta["sum"] == 7][:1]
    assert task.reward(completion, e) == reward


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, 9), b=st.integers(0, 9), guesses=st.lists(st.integers(0, 18), max_size=6),
       accept=st.integers(0, 18))  # fmt: skip
def test_reward_is_whether_the_accepted_guess_is_the_sum(a, b, guesses, accept):
    task = GuessCheckTask()
    e = task.sample(1, random.Random(0))[0]
    e = type(e)(prompt=f"{a}+{b}=", answer="", meta={"a": a, "b": b, "sum": a + b})
    text = "".join(f"{g}? " for g in guesses) + f"{accept}!"
    assert task.reward(text, e) == float(accept == a + b)
    assert task.reward(text[:-1], e) == 0.0  # no "!": nothing accepted


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_operand": 0}, "max_operand"), ({"max_operand": 50}, "max_operand"),
     ({"max_wrong": 19}, "max_wrong"), ({"max_wrong": -1}, "max_wrong"),
     ({"p_direct": 1.5}, "p_direct"), ({"p_direct": True}, "p_direct"),
     ({"min_wrong": 0}, "min_wrong"), ({"max_wrong": 4, "min_wrong": 5}, "min_wrong")],
)  # fmt: skip
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GuessCheckTask(**kwargs)


def test_registered():
    assert isinstance(make_task("guess-check", max_operand=4), GuessCheckTask)
    only_direct = GuessCheckTask(max_wrong=0)  # min_wrong does not matter then
    assert all(
        e.answer.endswith("!") and "?" not in e.answer
        for e in only_direct.sample(50, random.Random(0))
    )


# ---------------------------------------------------------------------------------------------
# The shipped embedded model: what build_embedded wrote, and what it does at the start of RL
# ---------------------------------------------------------------------------------------------
def test_shipped_model_is_the_spec_build_and_loads_without_building(tmp_path):
    import json

    import torch

    from bapo import models

    spec = models.EmbeddedSpec.for_task("guess-check")
    shipped = models.SHIPPED_DIR / spec.folder_name
    meta = json.loads((shipped / models.META_FILE).read_text())
    assert meta["key"] == spec.key() and meta["spec"] == spec.to_dict()
    builds = models.BUILD_COUNT
    path = models.embedded_model_path(spec, tmp_path)
    assert models.BUILD_COUNT == builds  # copied, not built
    model, tok = models.load_model(path)
    ids = torch.tensor([models.encode_prompt(tok, meta["probe"]["prompt"])])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    assert torch.allclose(logits, torch.tensor(meta["probe"]["logits"]), atol=1e-5)


def test_shipped_model_starts_with_long_wrong_answers(tmp_path):
    """The premise at step 0: wrong answers mostly run to the 12-token cap, right ones are short,
    and the model is right often enough for GRPO's groups to hold both."""
    from bapo import models

    spec = models.EmbeddedSpec.for_task("guess-check")
    model, tok = models.load_model(models.embedded_model_path(spec, tmp_path))
    task = spec.make_task()
    examples = task.eval_set(256)
    texts = models.sample_completions(model, tok, [e.prompt for e in examples], seed=0,
                                      max_new_tokens=spec.max_new_tokens)  # fmt: skip
    right = [t for t, e in zip(texts, examples) if task.reward(t, e)]
    wrong = [t for t, e in zip(texts, examples) if not task.reward(t, e)]
    acc = len(right) / len(texts)
    assert 0.10 <= acc <= 0.40, acc

    def n_tokens(t):  # + EOS for a completion that accepted a guess and stopped
        return len(tok(t, add_special_tokens=False)["input_ids"]) + ("!" in t)

    len_right = sum(map(n_tokens, right)) / len(right)
    len_wrong = sum(map(n_tokens, wrong)) / len(wrong)
    assert len_wrong >= 2 * len_right, (len_wrong, len_right)
    assert sum(n_tokens(t) >= spec.max_new_tokens for t in wrong) >= 0.8 * len(wrong)
