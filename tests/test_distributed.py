"""Two gloo ranks with different data must pick the same BAPO bounds (the global ones)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bapo import BAPOConfig, search_bounds


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
        for i, cfg in enumerate([BAPOConfig(), BAPOConfig.official()]):
            b = search_bounds(lp, old, adv, None, cfg)
            local = search_bounds(lp, old, adv, None, cfg, sync_distributed=False)
            out[(rank, i)] = (b, local)
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
