"""Benchmark of the loss core on one set of tensors (1M tokens by default, CPU).

Prints, measured in this one run:
  * policy_loss (forward + backward) with BAPO vs with a fixed clip  (target: <= 1.3x)
  * the vectorised bound search vs a loop that re-evaluates rho with a host sync per step
    (target: >= 10x faster when the search takes >= 10 steps)

    python bench/bench_loss.py [--tokens 1000000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bapo import BAPOConfig, FixedClip, contribution_sums, policy_loss, search_bounds, share
from bapo.demo import synthetic_batch


def loop_search(lp, old, adv, mask, cfg: BAPOConfig):
    """Algorithm 1 as a plain loop: evaluate rho at each point, one host sync per step."""
    ratio = torch.exp((lp - old).clamp(-20, 20))
    adv = adv[:, None].expand_as(lp) if adv.dim() == 1 else adv
    w = mask.to(torch.float64) * (torch.exp(old.to(torch.float64)) if cfg.rollout_weight else 1.0)
    steps = 0
    for k_low, k_high in cfg.path():
        c_low, c_high = cfg.c_low_at(k_low), cfg.c_high_at(k_high)
        pos, neg = contribution_sums(
            ratio, adv, w, c_low, c_high, contribution=cfg.contribution, dual_clip=cfg.dual_clip
        )
        rho = share(pos, neg).item()  # the host sync
        if rho >= cfg.rho0:
            break
        steps += 1
    return c_low, c_high, rho, min(steps, len(cfg.path()) - 1)


def timeit(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns, repeat: int, clock=time.perf_counter) -> list[float]:
    """Median time of each function, the functions run in turn ``repeat`` times."""
    for fn in fns:
        fn()  # warm up
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = clock()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ts.append(clock() - t0)
    return [statistics.median(ts) for ts in times]


def token_batch(tokens: int):
    """A stale synthetic GRPO batch of about ``tokens`` completion tokens (groups of 8)."""
    max_len = 512
    mean_len = 0.375 * max_len * 1.3  # see synthetic_batch: wrong answers run 1.6x longer
    n_prompts = max(1, round(tokens / (8 * mean_len)))
    return synthetic_batch(n_prompts=n_prompts, group_size=8, max_len=max_len, accuracy=0.5,
                           staleness=16, seed=0)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    b = token_batch(args.tokens)
    dev = torch.device(args.device)
    lp0, old = b.log_probs.to(dev), b.old_log_probs.to(dev)
    adv = b.advantages.to(dev)
    mask = b.mask.to(dev)
    n = int(mask.sum())
    cfg = BAPOConfig()

    def run_loss(clip):
        lp = lp0.clone().requires_grad_()
        loss, _ = policy_loss(lp, old, adv, mask, clip)
        loss.backward()

    bounds = search_bounds(lp0, old, adv, mask, cfg)
    # interleave the two so that drift in machine load hits both alike
    t_fixed, t_bapo = interleaved(
        [lambda: run_loss(FixedClip.grpo()), lambda: run_loss(cfg)], 2 * args.repeat
    )
    t_vec = timeit(lambda: search_bounds(lp0, old, adv, mask, cfg), args.repeat)
    t_loop = timeit(lambda: loop_search(lp0, old, adv, mask, cfg), max(1, args.repeat // 2))
    loop = loop_search(lp0, old, adv, mask, cfg)
    assert (loop[0], loop[1]) == (bounds.c_low, bounds.c_high), (loop, bounds)

    print(f"tokens: {n:,}  device: {dev}  threads: {torch.get_num_threads()}")
    print(f"BAPO search: {bounds.n_steps} steps -> c_low={bounds.c_low}, c_high={bounds.c_high}, "
          f"rho={bounds.rho:.3f}")  # fmt: skip
    print(f"policy_loss fwd+bwd, fixed clip : {t_fixed * 1e3:8.1f} ms")
    print(f"policy_loss fwd+bwd, BAPO       : {t_bapo * 1e3:8.1f} ms")
    print(f"bound search, vectorised        : {t_vec * 1e3:8.1f} ms")
    print(f"bound search, loop + host syncs : {t_loop * 1e3:8.1f} ms")
    print(f"ratio BAPO / fixed loss         : {t_bapo / t_fixed:6.2f}x   (target <= 1.3x)")
    print(
        f"ratio loop / vectorised search  : {t_loop / t_vec:6.1f}x   (target >= 10x, steps >= 10)"
    )


if __name__ == "__main__":
    main()
