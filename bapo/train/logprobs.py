"""Per-token log-probs and entropies of completions, in chunks.

The language-model head is applied to a chunk of positions at a time, so the ``(tokens, vocab)``
logits never exist for the whole batch at once; with gradients on, each chunk is checkpointed
(recomputed in backward) so memory stays bounded there too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass
class Packed:
    """Prompt + completion sequences, right-padded, with where each completion token sits."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    rows: torch.Tensor  # (N,) sequence index of each completion token
    cols: torch.Tensor  # (N,) position of the hidden state that predicts it (token pos - 1)
    targets: torch.Tensor  # (N,) the completion token ids
    completion_mask: torch.Tensor  # (B, Tc) bool
    slots: torch.Tensor  # (N,) flat index of each token in the (B, Tc) completion grid


def pack(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int, device="cpu"
) -> Packed:
    """Right-pad ``prompt + completion`` rows and index the completion tokens."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    B = len(prompts)
    L = max(len(p) + len(c) for p, c in zip(prompts, completions))
    Tc = max([len(c) for c in completions] + [1])
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    cmask = torch.zeros((B, Tc), dtype=torch.bool)
    rows, cols, targets, slots = [], [], [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if not p:
            raise ValueError(f"prompt {i} is empty: a completion needs at least one prompt token")
        seq = list(p) + list(c)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        att[i, : len(seq)] = 1
        cmask[i, : len(c)] = True
        for t in range(len(c)):
            rows.append(i)
            cols.append(len(p) + t - 1)
            targets.append(c[t])
            slots.append(i * Tc + t)
    as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return Packed(
        ids.to(device), att.to(device), as_long(rows), as_long(cols), as_long(targets),
        cmask.to(device), as_long(slots),
    )  # fmt: skip


def _head_chunk(head, hidden, targets, temperature: float, want_entropy: bool):
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)
    lp = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    if not want_entropy:
        return lp, torch.zeros_like(lp)
    p = torch.softmax(logits, dim=-1)
    ent = logz - (p * logits).sum(-1)
    return lp, ent


def completion_logprobs(
    model,
    packed: Packed,
    *,
    temperature: float = 1.0,
    chunk_size: int = 4096,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(y_t | x, y_<t)`` and the entropy of ``pi(. | x, y_<t)`` for every completion token.

    Returned on the ``(B, Tc)`` completion grid (zeros off ``packed.completion_mask``).  Logits
    are divided by ``temperature``, the distribution the rollout engine sampled from.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    hidden = decoder(
        input_ids=packed.input_ids, attention_mask=packed.attention_mask, use_cache=False
    )[0]
    h = hidden[packed.rows, packed.cols]  # (N, H): the states that predict completion tokens
    lps, ents = [], []
    grad = torch.is_grad_enabled()
    for s in range(0, h.shape[0], chunk_size):
        args = (
            head,
            h[s : s + chunk_size],
            packed.targets[s : s + chunk_size],
            temperature,
            entropy,
        )
        if grad:
            lp, ent = checkpoint(_head_chunk, *args, use_reentrant=False)
        else:
            lp, ent = _head_chunk(*args)
        lps.append(lp)
        ents.append(ent)
    B, Tc = packed.completion_mask.shape
    flat_lp = torch.zeros(B * Tc, device=h.device, dtype=torch.float32)
    flat_ent = torch.zeros(B * Tc, device=h.device, dtype=torch.float32)
    if lps:
        flat_lp = flat_lp.index_put((packed.slots,), torch.cat(lps))
        flat_ent = flat_ent.index_put((packed.slots,), torch.cat(ents).detach())
    return flat_lp.view(B, Tc), flat_ent.view(B, Tc)
