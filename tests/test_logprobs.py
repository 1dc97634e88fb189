"""Chunked completion log-probs against a full-logits reference; packing; gradients."""

import pytest
import torch

from bapo.train.logprobs import completion_logprobs, pack

PROMPTS = [[1, 5, 6], [1, 7], [1, 3, 4, 5, 6]]
COMPLETIONS = [[8, 9, 2], [10, 2], []]


def reference(model, prompts, completions, temperature=1.0):
    out = []
    for p, c in zip(prompts, completions):
        ids = torch.tensor([p + c])
        logits = model(input_ids=ids).logits[0].float() / temperature
        logp = torch.log_softmax(logits, -1)
        lp = [logp[len(p) + t - 1, c[t]] for t in range(len(c))]
        ent = [-(logp[len(p) + t - 1].exp() * logp[len(p) + t - 1]).sum() for t in range(len(c))]
        out.append((lp, ent))
    return out


@pytest.mark.parametrize("chunk", [1, 2, 4096])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_match_full_logits(random_llama, chunk, temperature):
    packed = pack(PROMPTS, COMPLETIONS, pad_id=0)
    with torch.no_grad():
        lp, ent = completion_logprobs(
            random_llama, packed, temperature=temperature, chunk_size=chunk, entropy=True
        )
        ref = reference(random_llama, PROMPTS, COMPLETIONS, temperature)
    assert lp.shape == (3, 3)
    for i, (rlp, rent) in enumerate(ref):
        n = len(COMPLETIONS[i])
        assert torch.allclose(lp[i, :n], torch.stack(rlp) if n else lp[i, :0], atol=1e-5)
        assert torch.allclose(ent[i, :n], torch.stack(rent) if n else ent[i, :0], atol=1e-5)
        assert torch.all(lp[i, n:] == 0) and torch.all(ent[i, n:] == 0)
    assert packed.completion_mask.sum() == 5


def test_checkpointed_chunks_give_the_same_gradient(random_llama):
    packed = pack(PROMPTS, COMPLETIONS, pad_id=0)
    grads = []
    for chunk in (1, 4096):
        random_llama.zero_grad()
        lp, _ = completion_logprobs(random_llama, packed, chunk_size=chunk)
        lp.sum().backward()
        grads.append(random_llama.lm_head.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_pack_rejects_empty_prompt_and_length_mismatch():
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pack([[]], [[3]], pad_id=0)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        pack([[1], [1]], [[3]], pad_id=0)
