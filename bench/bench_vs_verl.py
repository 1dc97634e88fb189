"""The cost of BAPO's loss against the loss it replaces: verl's ``vanilla`` policy loss.

Prints, measured in this one run on the same tensors (1M tokens by default, forward + backward,
token-mean aggregation, per-token advantages as verl passes them, the three alternated so
that drift in machine load hits them alike; on CPU the clock is this process's CPU time on one
thread, which other processes on a shared machine disturb least):

  * ``policy_loss`` with a fixed clip  / verl ``vanilla``   (target: <= 1.10x)
  * ``policy_loss`` with BAPO (paper)  / verl ``vanilla``   (target: <= 1.25x)

verl's ``compute_policy_loss_vanilla`` is used where verl is importable (``.venv-verl``, built by
``make test-verl``); elsewhere :func:`vanilla_reference`, its math written out from verl 0.9.1
(the ratio, both clips, the dual clip, ``agg_loss`` and its three metrics read with ``.item()``).

    python bench/bench_vs_verl.py [--tokens 1000000] [--device cpu|cuda --clock wall]
                                  [--repeat 15] [--threads 1]
    .venv-verl/bin/python bench/bench_vs_verl.py      # against verl itself
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_loss import interleaved, token_batch  # bench/ is on the path as a script

from bapo import BAPOConfig, FixedClip, policy_loss


def _masked_sum(values, mask):
    return (torch.where(mask.bool(), values, 0.0) * mask).sum()


def _masked_mean(values, mask):
    return _masked_sum(values, mask) / (mask.sum() + 1e-8)


def vanilla_reference(old_log_prob, log_prob, advantages, response_mask, clip_low=0.2,
                      clip_high=0.2, clip_c=3.0):  # fmt: skip
    """verl 0.9.1's ``compute_policy_loss_vanilla`` + ``agg_loss("token-mean")``, written out."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = _masked_mean(-negative_approx_kl, response_mask)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = _masked_mean(torch.gt(pg_losses2, pg_losses1).float(), response_mask)
    pg_losses3 = -advantages * clip_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = _masked_mean(
        torch.gt(clip_pg_losses1, pg_losses3) * (advantages < 0).float(), response_mask
    )
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    pg_loss = _masked_sum(pg_losses, response_mask) / response_mask.sum()
    metrics = {
        "actor/pg_clipfrac": pg_clipfrac.detach().item(),
        "actor/ppo_kl": ppo_kl.detach().item(),
        "actor/pg_clipfrac_lower": pg_clipfrac_lower.detach().item(),
    }
    return pg_loss, metrics


def verl_vanilla():
    """verl's own vanilla loss and an ActorConfig for it, or None without verl."""
    try:
        from verl.trainer.ppo.core_algos import get_policy_loss_fn
        from verl.workers.config import FSDPActorConfig
    except ImportError:
        return None
    config = FSDPActorConfig(strategy="fsdp", ppo_mini_batch_size=4,
                             ppo_micro_batch_size_per_gpu=2, rollout_n=1)  # fmt: skip
    fn = get_policy_loss_fn("vanilla")

    def run(old, lp, adv, mask):
        return fn(old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask,
                  loss_agg_mode="token-mean", config=config, rollout_is_weights=None)  # fmt: skip

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: this process's CPU time (robust to other load on a shared"
                    " machine; the default on CPU); wall: elapsed time (use on a GPU)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: CPU time is the work itself, not other"
                    " processes' contention for the cores)")  # fmt: skip
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    b = token_batch(args.tokens)
    dev = torch.device(args.device)
    lp0, old = b.log_probs.to(dev), b.old_log_probs.to(dev)
    adv = b.advantages.to(dev)[:, None].expand_as(lp0).contiguous()  # verl: per token
    mask = b.mask.to(dev)
    n = int(mask.sum())

    real = verl_vanilla()
    vanilla = real or (lambda old, lp, adv, mask: vanilla_reference(old, lp, adv, mask))
    fixed = FixedClip(0.8, 1.2, dual_clip=3.0)  # verl's defaults
    bapo = BAPOConfig()

    def run_vanilla():
        lp = lp0.clone().requires_grad_()
        loss, _ = vanilla(old, lp, adv, mask)
        loss.backward()

    def run_ours(clip):
        def run():
            lp = lp0.clone().requires_grad_()
            loss, _ = policy_loss(lp, old, adv, mask, clip)
            loss.backward()

        return run

    # the two agree at verl's bounds (a check, not a timing)
    lp = lp0.clone().requires_grad_()
    ref, _ = vanilla(old, lp, adv, mask)
    ours, stats = policy_loss(lp, old, adv, mask, fixed)
    assert torch.allclose(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-7), (
        float(ours),
        float(ref),
    )
    _, bstats = policy_loss(lp0, old, adv, mask, bapo)

    t_v, t_fixed, t_bapo = interleaved(
        [run_vanilla, run_ours(fixed), run_ours(bapo)], args.repeat, clock
    )  # fmt: skip
    which = "verl 0.9.1 itself" if real else "bench's re-implementation of verl 0.9.1"
    print(f"tokens: {n:,}  device: {dev}  threads: {torch.get_num_threads()}  "
          f"clock: {args.clock}  vanilla: {which}")  # fmt: skip
    print(f"BAPO bounds: c_low={bstats.c_low}, c_high={bstats.c_high} after "
          f"{bstats.n_steps} steps, rho={bstats.rho:.3f}")  # fmt: skip
    print(f"verl vanilla fwd+bwd           : {t_v * 1e3:8.1f} ms")
    print(f"policy_loss fixed clip fwd+bwd : {t_fixed * 1e3:8.1f} ms")
    print(f"policy_loss BAPO fwd+bwd       : {t_bapo * 1e3:8.1f} ms")
    print(f"ratio fixed clip / vanilla     : {t_fixed / t_v:6.2f}x   (target <= 1.10x)")
    print(f"ratio BAPO / vanilla           : {t_bapo / t_v:6.2f}x   (target <= 1.25x)")


if __name__ == "__main__":
    main()
