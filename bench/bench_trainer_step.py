"""The cost of a BAPO trainer step against a GRPO step, measured as a ratio in one run.

Two trainers on the embedded model (``cpu-tiny``: 8 prompts x 8 completions a step) at
staleness 4 (``train.mini_batches=4``: four updates per rollout batch) with several
micro-batches per update (``train.micro_batch_size=4``: four), stepped in turn so that drift
in machine load hits both alike (one intra-op thread: CPU time is then the work itself).
Prints the median CPU time of a step (rollout and updates)
and of its update part, and the ratios (target: a BAPO step <= 1.02x a GRPO step), for BAPO
as configured by default (an extra no-grad forward pass before each multi-micro-batch update)
and with ``train.keep_graphs=true`` (no extra pass; the memory of the whole mini-batch).

    python bench/bench_trainer_step.py [--steps 8] [--micro 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bapo.train.config import load_config
from bapo.train.trainer import Trainer


def make(algo: str, out: str, steps: int, micro: int, keep_graphs: bool = False) -> Trainer:
    over = [
        f"train.steps={steps + 1}", "train.mini_batches=4", f"train.micro_batch_size={micro}",
        "run.eval_every=0", "run.progress=false", f"run.out_dir={out}/{algo}{keep_graphs}",
        f"train.keep_graphs={str(keep_graphs).lower()}",
    ]  # fmt: skip
    return Trainer(load_config("cpu-tiny", algo=algo, overrides=over))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: CPU time is the work itself)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        trainers = {a: make(a, out, args.steps, args.micro) for a in ("grpo", "bapo")}
        trainers["bapo+keep_graphs"] = make("bapo", out, args.steps, args.micro, True)
        step_t = {a: [] for a in trainers}
        update_t = {a: [] for a in trainers}
        for tr in trainers.values():
            tr.train_step()  # warm up (first rollout, allocations)
        for _ in range(args.steps):
            for a, tr in trainers.items():
                c0 = time.process_time()
                rec = tr.train_step()
                step_t[a].append(time.process_time() - c0)
                update_t[a].append(rec["time/update_s"])
    med = {a: statistics.median(v) for a, v in step_t.items()}
    upd = {a: statistics.median(v) for a, v in update_t.items()}
    print(f"cpu-tiny, staleness 4 (4 updates a step), {64 // 4 // args.micro} micro-batches an "
          f"update, {args.steps} steps each, alternated")  # fmt: skip
    for a in trainers:
        print(f"{a:16s} step CPU time {med[a] * 1e3:7.1f} ms   update wall {upd[a] * 1e3:7.1f} ms")
    for a in ("bapo", "bapo+keep_graphs"):
        print(f"ratio {a} / grpo step: {med[a] / med['grpo']:6.3f}x (target <= 1.02x),"
              f" update (wall): {upd[a] / upd['grpo']:6.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
