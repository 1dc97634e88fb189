"""The cost of a BAPO trainer step against a GRPO step, measured as ratios in one command.

The embedded model (``cpu-tiny``: 8 prompts x 8 completions a step) at staleness 4
(``train.mini_batches=4``: four updates per rollout batch) with several micro-batches per update
(``train.micro_batch_size=4``: four).  One trainer samples each step's rollout batch; then,
from the same weights and optimizer state, it updates on those samples once per variant: GRPO
(``FixedClip(0.8, 1.2)``) and BAPO (the paper's settings), in a random order drawn afresh every step,
and the run goes on from GRPO's update.  The variants thus share the data, the model object and
the drift in machine load (one intra-op thread: CPU time is then the work itself).  Two
separate trainers would not compare the algorithms alone: their policies, and so their
completion lengths, part after the first update.  The same run repeated in a fresh process
moves the ratios by a few per cent, so ``--runs`` fresh processes (seeds 0, 1, ...) are pooled.

BAPO is timed as configured by default (``train.keep_graphs=auto``: the search pass keeps the
graphs that fit in the graph budget, here all of them), with ``true`` (all, unmeasured) and
with ``false`` (only the first: the memory of one gradient pass, a second forward for every
other micro-batch).  Prints the median CPU time of the rollout and of each update pass, how
many graphs the default kept and what they held, and, paired by step, the step ratio
``(rollout + BAPO update) / (rollout + GRPO update)`` (target <= 1.02x) and the update ratio
alone: the median over all steps with a 95% bootstrap interval, and each run's median.

    python bench/bench_trainer_step.py [--runs 3] [--steps 30] [--micro 4] [--preset cpu-tiny]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bapo.loss import BAPOConfig, FixedClip
from bapo.train.config import load_config
from bapo.train.trainer import Trainer


def make(out: str, steps: int, micro: int, preset: str, seed: int, extra=()) -> Trainer:
    over = [
        f"train.steps={steps + 1}", "train.mini_batches=4", f"train.micro_batch_size={micro}",
        f"train.seed={seed}", "run.eval_every=0", "run.progress=false", f"run.out_dir={out}",
        *extra,
    ]  # fmt: skip
    return Trainer(load_config(preset, algo="grpo", overrides=over))


def cpu_time(fn):
    c0 = time.process_time()
    out = fn()
    return out, time.process_time() - c0


VARIANTS = {  # name: (clip rule, train.keep_graphs)
    "grpo": (FixedClip(0.8, 1.2), "auto"),
    "bapo": (BAPOConfig(), "auto"),  # the paper's settings, as configured by default
    "bapo keep=true": (BAPOConfig(), True),
    "bapo keep=false": (BAPOConfig(), False),
}


def measure(steps: int, micro: int, preset: str, seed: int, extra=()) -> dict:
    """One process's run: per step, the rollout's CPU time and each variant's update's."""
    names, rng = list(VARIANTS), random.Random(seed)
    with tempfile.TemporaryDirectory() as out:
        tr = make(out, steps, micro, preset, seed, extra)
        t = tr.cfg.train
        res = {"rollout": [], "kept": [], "held": [], "update": {a: [] for a in names},
               "n_micro": t.prompts_per_step * t.group_size // t.mini_batches // micro}  # fmt: skip
        for step in range(steps + 1):  # step 0 warms up (first allocations)
            tr._engine_ready()
            (samples, _), roll = cpu_time(tr.rollout)
            start = copy.deepcopy((tr.model.state_dict(), tr.optimizer.state_dict()))
            start_version, after_grpo = tr.version, None
            for a in rng.sample(names, len(names)):  # a fresh order every step
                tr.clip_rule, tr.cfg.train.keep_graphs = VARIANTS[a]
                tr.model.load_state_dict(start[0])
                tr.optimizer.load_state_dict(start[1])
                tr.version = start_version
                rec, took = cpu_time(lambda s=samples: tr.update(s))
                if a == "grpo":
                    after_grpo = copy.deepcopy((tr.model.state_dict(), tr.optimizer.state_dict()))
                if step:
                    res["update"][a].append(took)
                if step and a == "bapo":
                    res["kept"].append(rec["train/graphs_kept"])
                    res["held"].append(rec["memory/graphs_mb"])
            tr.model.load_state_dict(after_grpo[0])  # the run goes on from GRPO's update
            tr.optimizer.load_state_dict(after_grpo[1])
            tr.step += 1
            if step:
                res["rollout"].append(roll)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run")
    ap.add_argument("--runs", type=int, default=3,
                    help="fresh processes, seeds 0..runs-1 (a process's memory layout alone"
                         " moves these ratios by a few per cent)")  # fmt: skip
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--preset", default="cpu-tiny")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. rollout.max_new_tokens=48")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: CPU time is the work itself)")  # fmt: skip
    ap.add_argument("--child-seed", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_seed is not None:
        print(json.dumps(measure(args.steps, args.micro, args.preset, args.child_seed, args.set)))
        return
    runs = []
    for seed in range(args.runs):
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--micro", str(args.micro),
               "--preset", args.preset, "--threads", str(args.threads), "--child-seed", str(seed),
               "--set", *args.set]  # fmt: skip
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report(runs, args)


def report(runs: list[dict], args) -> None:
    names = list(VARIANTS)
    pooled = lambda f: [x for r in runs for x in f(r)]  # noqa: E731
    roll = statistics.median(pooled(lambda r: r["rollout"]))
    print(f"{' '.join([args.preset, *args.set])}, staleness 4 (4 updates a step), {runs[0]['n_micro']} micro-batches an"
          f" update; {args.runs} runs (fresh processes, seeds 0-{args.runs - 1}) x {args.steps}"
          " steps; in a run every variant updates on the same samples from the same weights")  # fmt: skip
    print(f"rollout (shared)   CPU time {roll * 1e3:7.1f} ms (median)")
    for a in names:
        upd = statistics.median(pooled(lambda r, a=a: r["update"][a]))
        print(f"{a:18s} update CPU time {upd * 1e3:7.1f} ms (median)")
    print(f"bapo (keep_graphs=auto) kept {statistics.mean(pooled(lambda r: r['kept'])):.2f} of"
          f" {runs[0]['n_micro']} graphs an update, holding"
          f" {statistics.mean(pooled(lambda r: r['held'])):.2f} MiB")  # fmt: skip
    print("ratios: each step's own ratio; median over all steps [95% bootstrap interval], and"
          " each run's median")  # fmt: skip
    for a in names[1:]:
        step_r = [[(ro + u) / (ro + g) for ro, u, g in zip(r["rollout"], r["update"][a],
                   r["update"]["grpo"])] for r in runs]  # fmt: skip
        alone = [[u / g for u, g in zip(r["update"][a], r["update"]["grpo"])] for r in runs]
        per_run = ", ".join(f"{statistics.median(x):.3f}" for x in step_r)
        print(f"ratio {a:18s} / grpo step: {interval(sum(step_r, []))} (target <= 1.02x);"
              f" runs {per_run}; update alone: {interval(sum(alone, []))}")  # fmt: skip


def interval(ratios: list[float], draws: int = 2000) -> str:
    """The median ratio and a 95% bootstrap interval of the median (seeded)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    lo, hi = meds[int(0.025 * draws)], meds[int(0.975 * draws) - 1]
    return f"{statistics.median(ratios):5.3f}x [{lo:5.3f}, {hi:5.3f}]"


if __name__ == "__main__":
    main()
