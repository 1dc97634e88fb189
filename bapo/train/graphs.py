"""How much memory an autograd graph holds, and how much the trainer may spend keeping graphs.

Algorithm 1 searches the clipping bounds on a whole mini-batch before its first backward, so
with several micro-batches the trainer needs every micro-batch's current log-probs first.  A
micro-batch forwarded *with* grad for the search can keep its graph and serve the gradient pass
too (no second forward); one forwarded without grad costs a second forward later.  The trainer
keeps the graphs of the first micro-batches while they fit in a budget (``train.keep_graphs``,
``train.graph_memory_gb``); these two functions measure a graph and find that budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch

# "auto" spends at most this share of what is free: half of a GPU's free memory (the backward
# of a kept graph still needs working memory), a quarter of the host's available RAM.
CUDA_SHARE = 0.5
HOST_SHARE = 0.25


def forward_with_graph_bytes(fn: Callable[[], torch.Tensor], params: Iterable[torch.Tensor],
                             device: torch.device) -> tuple[torch.Tensor, int]:  # fmt: skip
    """Run ``fn`` (a forward pass with grad) and return its output and the bytes its graph holds.

    On CUDA this is the growth of allocated memory over the call (what stays allocated: the
    graph's saved activations and the output).  Elsewhere it is the size of the tensors autograd
    saved for backward, each storage counted once, parameters (and views of them) not at all:
    they exist with or without the graph.  Recomputed (checkpointed) activations are not held,
    so they are not counted."""
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        out = fn()
        return out, max(torch.cuda.memory_allocated(device) - before, 0)
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


def available_host_bytes() -> int:
    """Host memory the OS says is available (``MemAvailable`` on Linux; else the physical size)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def graph_budget(device: torch.device, graph_memory_gb: float | None) -> float:
    """Bytes the trainer may hold in kept graphs: ``graph_memory_gb`` when given, else (auto)
    half of the GPU's free memory (what the caching allocator holds unused counts as free) or a
    quarter of the host's available RAM."""
    if graph_memory_gb is not None:
        return graph_memory_gb * 2**30
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return CUDA_SHARE * (free + idle)
    return HOST_SHARE * available_host_bytes()
