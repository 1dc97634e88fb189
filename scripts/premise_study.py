"""The study behind docs/science.md (round 3): does the premise of BAPO arise on a laptop task,
and what do GRPO, clip-higher, BAPO (paper) and BAPO (official) do there?

    python scripts/premise_study.py --preset cpu-guess --seeds 5 --staleness 1,4,8 \
        --algos grpo,clip-higher,bapo,bapo-official --out runs/study --jobs 2

Every (algorithm, staleness, seed) is one ordinary run of the trainer (matched updates: see
``bapo.train.compare``); each run's premise numbers (``bapo.study.premise``) and Table 4's
quadrants on its real update batches (``bapo.theory.batch_quadrants``, averaged over updates)
go to ``<out>/results.jsonl``; ``<out>/tables.md`` holds the tables for docs/science.md.  Runs
already in results.jsonl are skipped, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def one_run(args: tuple) -> dict:
    preset, algo, staleness, seed, out, overrides, via = args
    import torch

    from bapo.loss import clip_regions, importance_ratio
    from bapo.study import load_run, premise
    from bapo.theory import batch_quadrants
    from bapo.train.compare import staleness_config
    from bapo.train.config import load_config
    from bapo.train.trainer import Trainer

    torch.set_num_threads(1)
    base = load_config(preset, algo=algo, overrides=[*overrides, "run.progress=false"])
    cfg = staleness_config(base, staleness, via)
    cfg.train.seed = base.train.seed + seed
    cfg.run.out_dir = str(Path(out) / f"{algo}-s{staleness}-seed{seed}")
    cfg.run.overwrite = True  # a run not yet in results.jsonl starts over (an interrupted one too)
    quads: list = []

    def hook(u):
        lp, old, adv = u["inputs"]
        rule = u["rule"]
        high, low, dual = clip_regions(importance_ratio(lp, old), adv, rule.c_low, rule.c_high,
                                       rule.dual_clip)  # fmt: skip
        quads.append(batch_quadrants(lp, adv, ~(high | low | dual)))

    Trainer(cfg.validate(), update_hook=hook).train()
    metrics, updates = load_run(cfg.run.out_dir)
    names = list(quads[0].n) if quads else []

    def avg(field):
        return {k: sum(getattr(q, field)[k] for q in quads) / len(quads) for k in names}

    return {
        "algo": algo, "staleness": staleness, "seed": cfg.train.seed,
        "premise": premise(metrics, updates, rho0=0.4).as_dict(),
        "eval_accuracy": next((m["eval/accuracy"] for m in reversed(metrics)
                               if "eval/accuracy" in m), float("nan")),
        "clip_high": _mean([u["clip/high_frac"] for u in updates]),
        "clip_low": _mean([u["clip/low_frac"] for u in updates]),
        "c_low": _mean([u["bapo/c_low"] for u in updates]),
        "c_high": _mean([u["bapo/c_high"] for u in updates]),
        "rho": _mean([u["bapo/rho"] for u in updates]),
        "updates": len(updates),
        "quadrants_kept": avg("kept"), "quadrants_clipped": avg("clipped"),
        "quadrants_n_clipped": avg("n_clipped"), "quadrants_n": avg("n"),
    }  # fmt: skip


def _mean(xs):
    from bapo.study import mean_ci

    return mean_ci(xs)[0]  # nan-aware


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-guess")
    ap.add_argument("--algos", default="grpo,clip-higher,bapo,bapo-official")
    ap.add_argument("--staleness", default="1,4,8")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--via", default="epochs", choices=["epochs", "mini-batches"])
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("overrides", nargs="*", help="section.field=value for every run")
    a = ap.parse_args(argv)
    from bapo.study import study_tables

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = []
    if results_path.exists():
        done = [json.loads(x) for x in results_path.read_text().splitlines() if x.strip()]
    have = {(r["algo"], r["staleness"], r["seed"]) for r in done}
    jobs = [
        (a.preset, algo, int(s), seed, str(out), a.overrides, a.via)
        for s in a.staleness.split(",")
        for algo in a.algos.split(",")
        for seed in range(a.seeds)
        if (algo, int(s), seed) not in have  # the presets' base seed is 0
    ]
    print(f"{len(jobs)} runs to go ({len(done)} already in {results_path})", flush=True)
    with ProcessPoolExecutor(max_workers=a.jobs) as pool, results_path.open("a") as f:
        for r in pool.map(one_run, jobs):
            f.write(json.dumps(r) + "\n")
            f.flush()
            done.append(r)
            p = r["premise"]
            print(f"{r['algo']:14s} S={r['staleness']} seed={r['seed']}: acc "
                  f"{p['acc_start']:.2f}->{p['acc_end']:.2f}, rho<rho0 "
                  f"{p['rho_below_first_half']:.2f}, clip {p['clip_frac']:.3f}", flush=True)  # fmt: skip
    tables = study_tables(done)
    (out / "tables.md").write_text(tables)
    print(tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
