"""The transformers engine: its log-probs are the sampling distribution's, it is reproducible,
it stops at EOS, and top-k / top-p filter what they should."""

import pytest
import torch

from bapo.rollout.base import SamplingParams
from bapo.rollout.hf import HFEngine, filter_logits
from bapo.train.logprobs import completion_logprobs, pack


def test_engine_logprobs_equal_recomputed_and_seed_reproduces(random_llama):
    engine = HFEngine(random_llama, eos_token_id=2, pad_token_id=0)
    prompts = [[1, 5, 6], [1, 7], [1, 3, 4, 5, 6, 7]] * 4
    params = SamplingParams(temperature=0.9, max_new_tokens=6)
    gens = engine.generate(prompts, params, seed=3)
    again = engine.generate(prompts, params, seed=3)
    other = engine.generate(prompts, params, seed=4)
    assert [g.completion_ids for g in gens] == [g.completion_ids for g in again]
    assert [g.completion_ids for g in gens] != [g.completion_ids for g in other]
    packed = pack([g.prompt_ids for g in gens], [g.completion_ids for g in gens], pad_id=0)
    with torch.no_grad():
        lp, _ = completion_logprobs(random_llama, packed, temperature=0.9)
    for i, g in enumerate(gens):
        n = len(g.completion_ids)
        assert 1 <= n <= 6 and len(g.logprobs) == n
        assert torch.allclose(lp[i, :n], torch.tensor(g.logprobs), atol=1e-4)
        if g.finished:
            assert g.completion_ids[-1] == 2 and 2 not in g.completion_ids[:-1]
        else:
            assert n == 6 and 2 not in g.completion_ids


def test_engine_stops_at_eos_when_eos_is_forced(random_llama):
    model = random_llama
    with torch.no_grad():
        saved = model.lm_head.weight.clone()
        model.lm_head.weight.zero_()  # all logits equal: uniform over the 16 tokens
    try:
        engine = HFEngine(model, eos_token_id=2, pad_token_id=0)
        gens = engine.generate([[1, 5]] * 50, SamplingParams(max_new_tokens=40), seed=0)
        # uniform over 16 tokens: EOS (1/16) ends most completions well before 40 tokens
        assert sum(g.finished for g in gens) > 40
        assert all(g.logprobs[0] == pytest.approx(-torch.log(torch.tensor(16.0)).item(), abs=1e-5)
                   for g in gens)  # fmt: skip
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, top_p=0.8)  # 0.5 + 0.3 reaches 0.8: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p = filter_logits(logits, top_p=0.81)  # needs the third token too
    assert torch.isfinite(p[0, :3]).all() and torch.isinf(p[0, 3])
    assert torch.isfinite(filter_logits(logits, top_p=0.1)[0, 0])  # the top token always stays


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(temperature=0), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-1), "top_k"),
     (dict(max_new_tokens=0), "max_new_tokens")],
)  # fmt: skip
def test_sampling_params_validate(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)
