"""The embedded model: tokenizer round trip, build, cache, start accuracy, loading."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

import bapo.models as models
from bapo.models import (
    ACCEPT_BAND,
    CHARS,
    META_FILE,
    EmbeddedSpec,
    build_embedded,
    char_tokenizer,
    decode_completion,
    embedded_model_path,
    encode_prompt,
    load_model,
    sample_completions,
    sampled_accuracy,
)
from bapo.tasks import ArithmeticTask

TEXT = "47+38=85 -9*3 user: Hi?\nassistant: {x}"
CHAT = [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+2="}]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run several times faster on one thread, most of all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default embedded model, built once into a fresh cache for this module."""
    cache = tmp_path_factory.mktemp("bapo-cache")
    before = models.BUILD_COUNT
    path = embedded_model_path(EmbeddedSpec(), cache)
    assert models.BUILD_COUNT == before + 1
    return cache, path, json.loads((path / META_FILE).read_text())


@pytest.fixture(scope="module")
def loaded(built):
    return load_model(str(built[1]))


# ---------------------------------------------------------------------------------------------
# Tokenizer and prompts
# ---------------------------------------------------------------------------------------------
def test_char_tokenizer_is_one_token_per_char():
    tok = char_tokenizer()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TEXT)
    assert ids == [4 + CHARS.index(c) for c in TEXT]
    assert decode_completion(tok, ids) == TEXT
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_tokenizer_round_trip_keeps_ids(tmp_path):
    tok = char_tokenizer()
    tok.save_pretrained(tmp_path)
    LlamaConfig(vocab_size=len(tok), hidden_size=8, num_attention_heads=2).save_pretrained(tmp_path)
    want = tok(TEXT, add_special_tokens=False)["input_ids"]
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        again = cls.from_pretrained(tmp_path)
        assert again(TEXT, add_special_tokens=False)["input_ids"] == want, cls
        assert encode_prompt(again, TEXT) == encode_prompt(tok, TEXT)
        assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
        assert decode_completion(again, want + [2, 0]) == TEXT


def test_encode_prompt_plain_and_chat():
    tok = char_tokenizer()
    assert encode_prompt(tok, "1+2=") == [tok.bos_token_id] + [4 + CHARS.index(c) for c in "1+2="]
    joined = "system: Add.\nuser: 2+2=\nassistant:"
    assert encode_prompt(tok, CHAT) == encode_prompt(tok, joined)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    rendered = "<system>Add.\n<user>2+2=\n<assistant>"
    assert encode_prompt(tok, CHAT) == tok(rendered, add_special_tokens=False)["input_ids"]


def test_decode_completion_skips_special_tokens():
    tok = char_tokenizer()
    ids = tok("12", add_special_tokens=False)["input_ids"]
    assert decode_completion(tok, [tok.bos_token_id, *ids, tok.eos_token_id, 0, 0]) == "12"


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------
def test_spec_key_follows_the_spec():
    assert EmbeddedSpec() == EmbeddedSpec(task_kwargs={"digits": 1, "ops": "+-*"})
    assert EmbeddedSpec().key() == EmbeddedSpec(task_kwargs={"ops": "+-*", "digits": 1}).key()
    keys = {
        EmbeddedSpec().key(),
        EmbeddedSpec(seed=1).key(),
        EmbeddedSpec(hidden_size=32).key(),
        EmbeddedSpec(task_kwargs={"digits": 2, "ops": "+"}).key(),
    }
    assert len(keys) == 4
    assert EmbeddedSpec(seed=1).folder_name.startswith("embedded-arithmetic-")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"task": "sudoku"}, "task"),
        ({"task_kwargs": {"digits": 9}}, "digits"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": 66}, "hidden_size"),
        ({"num_layers": 1.5}, "num_layers"),
        ({"lr": 0}, "lr"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"batch_size": True}, "batch_size"),
        ({"eval_n": 0}, "eval_n"),
        ({"target_band": (0.5, 0.4)}, "target_band"),
        ({"target_band": (0.0, 0.4)}, "target_band"),
        ({"target_band": (0.1,)}, "target_band"),
    ],
)
def test_spec_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EmbeddedSpec(**kwargs)


# ---------------------------------------------------------------------------------------------
# Build and cache
# ---------------------------------------------------------------------------------------------
def test_built_folder(built):
    cache, path, meta = built
    assert path.parent == cache and path.name == EmbeddedSpec().folder_name
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).is_file(), name
    assert not [p for p in cache.iterdir() if p != path]  # no temporary folder left behind
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert meta["spec"] == EmbeddedSpec().to_dict()
    assert meta["key"] == EmbeddedSpec().key()
    assert 0 < meta["params"] < 3_000_000
    assert meta["build_seconds"] > 0  # recorded; how long a build takes is no test's business
    assert 0 < meta["sft_steps"] <= EmbeddedSpec().max_steps
    lo, hi = EmbeddedSpec().target_band
    last_step, last_acc = meta["accuracy_history"][-1]
    assert last_step == meta["sft_steps"] and last_acc >= lo  # the stop rule fired
    # earlier checks were below the band, or overshot it (and were rolled back)
    assert all(acc < lo or acc > hi for _, acc in meta["accuracy_history"][:-1])


def test_start_accuracy_is_in_band(built, loaded):
    model, tok = loaded
    task = ArithmeticTask(**EmbeddedSpec().task_kwargs)
    lo, hi = ACCEPT_BAND
    assert lo <= built[2]["start_accuracy"] <= hi
    acc = sampled_accuracy(model, tok, task, n=512, seed=99)  # other samples than the build's
    assert lo <= acc <= hi, acc
    # label smoothing: the model knows far more answers than it samples (RL can sharpen it)
    greedy = sampled_accuracy(model, tok, task, n=512, seed=5, temperature=0)
    assert (
        greedy
        == built[2]["greedy_accuracy"]
        == sampled_accuracy(model, tok, task, 512, 6, temperature=0)
    )
    assert greedy > acc + 0.2


def test_cache_is_reused(built, monkeypatch):
    cache, path, _ = built
    mtime, count = (path / META_FILE).stat().st_mtime_ns, models.BUILD_COUNT
    assert embedded_model_path(EmbeddedSpec(), cache) == path
    monkeypatch.setenv("BAPO_CACHE", str(cache))
    assert embedded_model_path() == path
    model, _ = load_model("embedded")
    model, _ = load_model("embedded:arithmetic")
    assert models.BUILD_COUNT == count
    assert (path / META_FILE).stat().st_mtime_ns == mtime


def test_loaded_model_reproduces_the_build(built, loaded):
    _, path, meta = built
    model, tok = loaded
    assert isinstance(tok, PreTrainedTokenizerFast) and tok.padding_side == "left"
    assert tok.pad_token_id == 0
    ids = torch.tensor([encode_prompt(tok, meta["probe"]["prompt"])])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(logits, torch.tensor(meta["probe"]["logits"]), rtol=0, atol=1e-5)
    auto_tok = AutoTokenizer.from_pretrained(path)
    assert auto_tok(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    again, _ = load_model(path, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_load_model_dtype(built):
    model, _ = load_model(built[1], dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="dtype='float99'"):
        load_model(built[1], dtype="float99")


def test_sampling_is_seeded_and_leaves_the_global_rng(loaded):
    model, tok = loaded
    prompts = [e.prompt for e in ArithmeticTask(digits=1, ops="+-*").eval_set(64)]
    torch.manual_seed(5)
    a = sample_completions(model, tok, prompts, seed=3, batch_size=20)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.rand(1) == after  # sampling did not consume the caller's stream
    assert sample_completions(model, tok, prompts, seed=3, batch_size=20) == a
    assert sample_completions(model, tok, prompts, seed=4, batch_size=20) != a
    assert model.training is False


def test_build_is_deterministic_and_rolls_back_an_overshoot(tmp_path):
    # band so low that the first check (step 40) overshoots it: SFT redoes steps 1.. one by one
    spec = EmbeddedSpec(max_steps=60, eval_every=40, eval_n=128, target_band=(0.01, 0.02))
    with pytest.warns(UserWarning, match="outside"):
        meta = build_embedded(spec, tmp_path / "a")
    steps = [s for s, _ in meta["accuracy_history"]]
    assert steps[0] == 40 and meta["accuracy_history"][0][1] > 0.02
    assert steps[1:] == list(range(1, len(steps)))
    assert meta["sft_steps"] == steps[-1] < 40
    with pytest.warns(UserWarning):
        build_embedded(spec, tmp_path / "b")
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(spec, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(models, "build_embedded", crash)
    with pytest.raises(RuntimeError, match="mid-build"):
        embedded_model_path(EmbeddedSpec(seed=7), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Loading errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "~/no-such-model-xyz"])
def test_missing_path_names_it(name):
    with pytest.raises(FileNotFoundError, match="no.such.model"):
        load_model(name)


def test_missing_path_object(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone"):
        load_model(tmp_path / "gone")


def test_unknown_embedded_task():
    with pytest.raises(ValueError, match="task='sudoku'"):
        load_model("embedded:sudoku")
