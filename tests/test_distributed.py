"""Two gloo ranks with different data must pick the same BAPO bounds (the global ones)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bapo import BAPOConfig, FixedClip, policy_loss, search_bounds


def _batch(seed: int, n: int, pos_frac: float):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(n, generator=g) * 0.9 + 0.05)
    lp = old + 0.5 * torch.randn(n, generator=g)
    adv = torch.where(torch.rand(n, generator=g) < pos_frac, 1.0, -1.0)
    return lp, old, adv


def _worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # rank 0 sees mostly positive tokens, rank 1 mostly negative ones
        lp, old, adv = _batch(rank, 300, 0.7 if rank == 0 else 0.1)
        group = dist.new_group([0, 1])  # an explicit (data-parallel) group, as verl's engines have
        for i, cfg in enumerate([BAPOConfig(), BAPOConfig.official()]):
            b = search_bounds(lp, old, adv, None, cfg)
            local = search_bounds(lp, old, adv, None, cfg, sync_distributed=False)
            out[(rank, i)] = (b, local)
            # the loss's statistics are global too: one all-reduce of a vector of sums
            _, stats = policy_loss(lp, old, adv, None, cfg, group=group)
            _, own = policy_loss(lp, old, adv, None, cfg, sync_distributed=False)
            out[("stats", rank, i)] = (stats, own)
        _, fixed = policy_loss(lp, old, adv, None, FixedClip(), group=group)
        out[("fixed", rank)] = fixed
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_with_different_data_pick_identical_global_bounds():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        out = dict(out)
    for i, cfg in enumerate([BAPOConfig(), BAPOConfig.official()]):
        (b0, local0), (b1, local1) = out[(0, i)], out[(1, i)]
        assert b0 == b1
        assert local0 != local1  # the ranks alone would disagree
        # ... and the shared choice is the one a single process makes on all the data
        parts = [_batch(r, 300, 0.7 if r == 0 else 0.1) for r in (0, 1)]
        lp, old, adv = (torch.cat([p[k] for p in parts]) for k in range(3))
        whole = search_bounds(lp, old, adv, None, cfg)
        assert (b0.c_low, b0.c_high, b0.n_steps) == (whole.c_low, whole.c_high, whole.n_steps)
        assert b0.rho == pytest.approx(whole.rho, rel=1e-9)


def test_logged_rho_clip_fractions_and_token_counts_are_global_on_every_rank():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        out = dict(out)
    parts = [_batch(r, 300, 0.7 if r == 0 else 0.1) for r in (0, 1)]
    lp, old, adv = (torch.cat([p[k] for p in parts]) for k in range(3))
    for i, cfg in enumerate([BAPOConfig(), BAPOConfig.official()]):
        (s0, own0), (s1, _own1) = out[("stats", 0, i)], out[("stats", 1, i)]
        assert s0 == s1  # every rank logs the same numbers
        _, whole = policy_loss(lp, old, adv, None, cfg)  # one process, all 600 tokens
        assert (s0.c_low, s0.c_high, s0.n_steps) == (whole.c_low, whole.c_high, whole.n_steps)
        assert s0.n_tokens == 600 and own0.n_tokens == 300
        for key in ("rho", "rho_gradient", "rho_value", "clip_high_frac", "clip_low_frac",
                    "approx_kl", "ratio_mean"):  # fmt: skip
            assert getattr(s0, key) == pytest.approx(getattr(whole, key), rel=1e-6), key
        assert own0.rho != pytest.approx(whole.rho, rel=1e-3)  # rank 0 alone would log another
    f0, f1 = out[("fixed", 0)], out[("fixed", 1)]
    _, whole = policy_loss(lp, old, adv, None, FixedClip())
    assert f0 == f1 and f0.n_tokens == 600
    assert f0.clip_high_frac == pytest.approx(whole.clip_high_frac, rel=1e-9)
    assert f0.rho == pytest.approx(whole.rho, rel=1e-6)
