"""The trainer's graph accounting (bapo/train/graphs.py): what a graph holds, and the budget."""

from __future__ import annotations

import torch

from bapo.train import graphs
from bapo.train.graphs import forward_with_graph_bytes, graph_budget

CPU = torch.device("cpu")


def test_a_graph_holds_the_saved_activations_not_the_parameters():
    # Linear(8, 16) -> tanh -> Linear(16, 4) on a batch of 5 without grad on the input: autograd
    # keeps x for the first weight's gradient (5*8 floats), tanh's output for tanh's backward
    # and the second weight's gradient (one storage, 5*16 floats), and the two weights, which
    # are parameters and exist anyway.  By hand: (40 + 80) * 4 bytes.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    out, held = forward_with_graph_bytes(lambda: net(x).sum(), net.parameters(), CPU)
    assert held == (5 * 8 + 5 * 16) * 4
    assert out.requires_grad
    out.backward()  # the graph still works after being measured
    assert net[0].weight.grad is not None


def test_the_count_grows_with_the_batch_and_is_zero_without_grad():
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    sizes = [forward_with_graph_bytes(lambda b=b: net(torch.randn(b, 8)), net.parameters(), CPU)[1]
             for b in (1, 2, 7)]  # fmt: skip
    assert sizes == [b * (8 + 16) * 4 for b in (1, 2, 7)]
    with torch.no_grad():
        _, held = forward_with_graph_bytes(lambda: net(torch.randn(3, 8)), net.parameters(), CPU)
    assert held == 0


def test_a_recomputed_activation_is_not_held():
    from torch.utils.checkpoint import checkpoint

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8, requires_grad=True)
    _, plain = forward_with_graph_bytes(lambda: net(x), net.parameters(), CPU)
    _, ckpt = forward_with_graph_bytes(lambda: checkpoint(net, x, use_reentrant=False),
                                       net.parameters(), CPU)  # fmt: skip
    assert plain == (5 * 8 + 5 * 16) * 4 and ckpt < plain


def test_the_budget_is_the_given_size_or_a_share_of_what_is_free(monkeypatch):
    assert graph_budget(CPU, 1.5) == 1.5 * 2**30
    monkeypatch.setattr(graphs, "available_host_bytes", lambda: 8 * 2**30)
    assert graph_budget(CPU, None) == 2 * 2**30  # a quarter of the available RAM


def test_available_host_memory_is_plausible():
    free = graphs.available_host_bytes()
    assert 0 < free < 2**50
