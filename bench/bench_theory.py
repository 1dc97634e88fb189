"""Benchmark of the tabular simulator (bapo.theory.simulate), formerly a wall-clock assert in
tests/test_theory.py (tests assert no wall-clock time: a loaded machine fails them).

Prints, measured in this one run, the best of 3 timings of 100 steps of the plateau bandit at
staleness 4 under BAPO, and its ratio to the target (<= 1.0 s on a laptop core; ratio <= 1).

    python bench/bench_theory.py
"""

from __future__ import annotations

import math
import time

from bapo import BAPOConfig
from bapo.theory import Bandit, simulate

TARGET_S = 1.0


def main() -> None:
    bandit = Bandit.plateau()
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        simulate(bandit, BAPOConfig(), staleness=4, n_steps=100)
        best = min(best, time.perf_counter() - t0)
    print(f"simulate, 100 steps at staleness 4: {best:.3f} s (target <= {TARGET_S} s,"
          f" ratio {best / TARGET_S:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
