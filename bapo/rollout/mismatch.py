"""How far the rollout engine's log-probs are from the trainer's for the same tokens.

An engine (vLLM in bf16 with its own kernels, or ``transformers`` with another batch shape)
computes ``log pi_rollout`` a little differently from the trainer's recomputation.  BAPO's ratio
``r = pi_theta / pi_rollout`` starts at ``exp(trainer - engine)`` rather than 1 when they differ,
so this is worth logging every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Mismatch", "logprob_mismatch"]


@dataclass(frozen=True)
class Mismatch:
    """Statistics of ``diff = trainer_logprobs - engine_logprobs`` over the masked tokens."""

    abs_mean: float  # mean |diff|
    abs_max: float  # max |diff|
    ratio_minus_one: float  # mean of exp(diff) - 1: the train/rollout ratio's offset from 1
    n_tokens: int

    def as_metrics(self) -> dict[str, float]:
        return {
            "rollout/logprob_abs_diff_mean": self.abs_mean,
            "rollout/logprob_abs_diff_max": self.abs_max,
            "rollout/train_rollout_ratio_minus_one": self.ratio_minus_one,
            "rollout/mismatch_tokens": self.n_tokens,
        }


@torch.no_grad()
def logprob_mismatch(
    engine_logprobs: torch.Tensor,
    trainer_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> Mismatch:
    """Compare per-token log-probs of the same completions (float64 sums; nan when no token).

    ``engine_logprobs`` come from the rollout engine (``Generation.logprobs``, padded);
    ``trainer_logprobs`` are the trainer's recomputation; ``mask`` marks real completion tokens.
    """
    if engine_logprobs.shape != trainer_logprobs.shape:
        raise ValueError(
            f"engine_logprobs has shape {tuple(engine_logprobs.shape)} but trainer_logprobs has"
            f" {tuple(trainer_logprobs.shape)}: they must match"
        )
    if mask is None:
        mask = torch.ones_like(engine_logprobs, dtype=torch.bool)
    elif mask.shape != engine_logprobs.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected {tuple(engine_logprobs.shape)}"
        )
    m = mask.to(torch.bool)
    n = int(m.sum())
    if n == 0:
        return Mismatch(math.nan, math.nan, math.nan, 0)
    diff = trainer_logprobs.detach().to(torch.float64) - engine_logprobs.detach().to(torch.float64)
    diff = diff[m]
    if not torch.isfinite(diff).all():
        raise ValueError("log-prob difference is not finite on some masked token (inf or nan)")
    a = diff.abs()
    return Mismatch(
        abs_mean=float(a.mean()),
        abs_max=float(a.max()),
        ratio_minus_one=float(torch.expm1(diff).mean()),
        n_tokens=n,
    )
