"""What the step rollback costs (bapo.train.trainer: an exception inside a step saves the step's
start).  Each step copies the cheap state at its start and, before its first optimizer step, the
weights and the optimizer state to host memory.

Prints, measured in this one run on the given preset (cpu-tiny by default): the time of those
copies per step, the time of a whole training step, and their ratio (target: <= 0.05).

    python bench/bench_rollback.py [--preset cpu-tiny] [--steps 5] [overrides...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from bapo.train.config import load_config
from bapo.train.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-tiny")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(a.preset, overrides=[*a.overrides, f"run.out_dir={out}",
                                               "run.progress=false", "run.eval_every=0"])  # fmt: skip
        trainer = Trainer(cfg)
        copies, steps = [], []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            trainer._begin_step()
            trainer._before_optimizer_step(trainer.optimizer, (), {})
            t1 = time.perf_counter()
            trainer._rollback_point.weights = None  # the step's own optimizer step copies again
            trainer.train_step()
            t2 = time.perf_counter()
            trainer._rollback_point = trainer._updates_log = None
            copies.append(t1 - t0)
            steps.append(t2 - t1)
    copy_s, step_s = statistics.median(copies), statistics.median(steps)
    params = sum(p.numel() for p in trainer.model.parameters())
    print(f"{a.preset}: {params / 1e6:.2f} M parameters; rollback copies {copy_s * 1e3:.1f} ms"
          f" a step, a step {step_s * 1e3:.0f} ms: ratio {copy_s / step_s:.3f} (target <= 0.05)")  # fmt: skip


if __name__ == "__main__":
    main()
