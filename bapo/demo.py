"""A walk through BAPO's bound search on a synthetic stale batch: ``python -m bapo.demo``.

The batch imitates what the paper measures on real runs (Section 3): wrong answers are more
numerous and longer than right ones (Figure 6), and the importance ratios of stale data spread
further from 1 for low-probability tokens (Figure 5).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from bapo.loss import BAPOConfig, FixedClip, grpo_advantages, policy_loss, search_path


@dataclass
class SyntheticBatch:
    log_probs: torch.Tensor  # (B, T) current policy
    old_log_probs: torch.Tensor  # (B, T) rollout policy
    advantages: torch.Tensor  # (B,) one per sequence
    mask: torch.Tensor  # (B, T) bool
    rewards: torch.Tensor  # (B,)


def synthetic_batch(
    n_prompts: int = 16,
    group_size: int = 8,
    max_len: int = 64,
    accuracy: float = 0.3,
    staleness: float = 4.0,
    seed: int = 0,
) -> SyntheticBatch:
    """A GRPO batch with stale log-probs: rewards, group advantages, token log-probs and a mask."""
    g = torch.Generator().manual_seed(seed)
    B = n_prompts * group_size
    rewards = (torch.rand(B, generator=g) < accuracy).float()
    # wrong answers run longer (Figure 6)
    base = torch.randint(max_len // 4, max_len // 2, (B,), generator=g)
    lengths = torch.where(rewards > 0, base, (base * 1.6).long().clamp(max=max_len))
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    # rollout probabilities: most tokens confident, a tail of low-probability ones
    p = torch.distributions.Beta(0.6, 0.25).sample((B, max_len)).clamp(1e-4, 1 - 1e-6)
    old = torch.log(p)
    # staleness moves log-probs; low-probability tokens move most (Figure 5)
    scale = 0.04 * staleness**0.5 * (1.0 + 1.5 * (-old).sqrt())
    lp = (old + scale * torch.randn(B, max_len, generator=g)).clamp(max=0.0)
    return SyntheticBatch(lp, old, grpo_advantages(rewards, group_size), mask, rewards)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--staleness", type=float, default=4.0)
    ap.add_argument("--accuracy", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    b = synthetic_batch(accuracy=args.accuracy, staleness=args.staleness, seed=args.seed)
    n_tok = int(b.mask.sum())
    pos_tok = int((b.mask & (b.advantages[:, None] > 0)).sum())
    print(f"Synthetic stale batch: {b.mask.shape[0]} completions, {n_tok} tokens, "
          f"{pos_tok / n_tok:.0%} of them with A > 0, staleness {args.staleness:g}")  # fmt: skip
    print()
    print("Fixed clips (Eq. 4):")
    for name, clip in [("GRPO", FixedClip.grpo()), ("clip-higher", FixedClip.clip_higher())]:
        _, s = policy_loss(b.log_probs, b.old_log_probs, b.advantages, b.mask, clip)
        print(f"  {name:12s} [{s.c_low:.2f}, {s.c_high:.2f}]  rho={s.rho:.3f}  "
              f"clipped: high {s.clip_high_frac:.1%}, low {s.clip_low_frac:.1%}")  # fmt: skip
    for title, cfg in [
        ("paper (Algorithm 1)", BAPOConfig()),
        ("official code", BAPOConfig.official()),
    ]:
        path = search_path(b.log_probs, b.old_log_probs, b.advantages, b.mask, cfg)
        print()
        target = f"rho >= {cfg.rho0:g}" if cfg.target == "share" else f"pos/neg >= {cfg.rho0:g}"
        print(f"BAPO, {title}: target {target}, measure '{cfg.contribution}'")
        print("  step  c_low  c_high   rho")
        shown = sorted({0, path.stop, *range(0, path.stop, max(1, path.stop // 6))})
        for i in shown:
            mark = "  <- chosen" if i == path.stop else ""
            print(f"  {i:4d}  {path.c_low[i]:.2f}   {path.c_high[i]:.2f}  "
                  f"{path.rho[i]:.3f}{mark}")  # fmt: skip
        _, s = policy_loss(b.log_probs, b.old_log_probs, b.advantages, b.mask, cfg)
        print(f"  clipped: high {s.clip_high_frac:.1%}, low {s.clip_low_frac:.1%}, "
              f"dual {s.clip_dual_frac:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
