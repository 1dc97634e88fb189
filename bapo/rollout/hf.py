"""A ``transformers`` rollout engine: batched sampling with a KV cache, on CPU or CUDA.

The loop is written out (rather than ``model.generate``) so that sampling draws from an explicit
``torch.Generator`` - a run resumed from a checkpoint samples exactly what the uninterrupted run
sampled - and so that the engine returns the log-prob of each sampled token under the sampling
distribution (temperature, top-k, top-p applied).
"""

from __future__ import annotations

import inspect

import torch

from bapo.rollout.base import Generation, RolloutEngine, SamplingParams


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) all but the ``top_k`` largest logits and the smallest nucleus of mass ``top_p``."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class HFEngine(RolloutEngine):
    """Samples from a ``transformers`` causal LM that lives in the training process.

    The engine holds a reference to the trained model, so weights are always in sync.
    """

    def __init__(
        self, model, eos_token_id: int | list[int], pad_token_id: int, batch_size: int = 256
    ):
        self.model = model
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.eos_ids = [int(e) for e in eos]
        self.pad_id = int(pad_token_id)
        self.batch_size = batch_size
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None
    ) -> list[Generation]:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else seed)
        out: list[Generation] = []
        for s in range(0, len(prompts), self.batch_size):
            out += self._generate_batch(prompts[s : s + self.batch_size], params, gen)
        return out

    def _generate_batch(self, prompts, params: SamplingParams, gen) -> list[Generation]:
        was_training = self.model.training
        self.model.eval()
        dev = self.device
        B = len(prompts)
        P = max(len(p) for p in prompts)
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        att = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at column P-1
            ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            att[i, P - len(p) :] = 1
        ids, att = ids.to(dev), att.to(dev)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        eos = torch.tensor(self.eos_ids, device=dev)
        tokens = torch.empty((B, 0), dtype=torch.long, device=dev)
        logps = torch.empty((B, 0), dtype=torch.float32, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)
        cache = None
        step_ids, step_pos = ids, pos
        for _ in range(params.max_new_tokens):
            out = self.model(
                input_ids=step_ids, attention_mask=att, position_ids=step_pos, use_cache=True,
                **{self._cache_kw: cache},
            )  # fmt: skip
            cache = out[self._cache_kw] if self._cache_kw in out else out.past_key_values
            logits = out.logits[:, -1, :].float() / params.temperature
            logits = filter_logits(logits, params.top_k, params.top_p)
            logp = torch.log_softmax(logits, dim=-1)
            nxt = torch.multinomial(logp.exp().cpu(), 1, generator=gen).to(dev).squeeze(-1)
            prev_done = done
            nxt = torch.where(prev_done, self.pad_id, nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            logps = torch.cat([logps, logp.gather(-1, nxt[:, None])], dim=1)
            lengths += (~prev_done).long()
            done = prev_done | torch.isin(nxt, eos)
            if bool(done.all()):
                break
            att = torch.cat([att, (~prev_done).long()[:, None]], dim=1)
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
        if was_training:
            self.model.train()
        finished = [False] * B
        result = []
        tok_l, lp_l, len_l = tokens.tolist(), logps.tolist(), lengths.tolist()
        for i in range(B):
            n = len_l[i]
            comp = tok_l[i][:n]
            finished[i] = bool(comp) and comp[-1] in self.eos_ids
            result.append(Generation(list(prompts[i]), comp, lp_l[i][:n], finished[i]))
        return result
