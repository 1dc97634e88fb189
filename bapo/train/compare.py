"""``bapo compare``: the same preset under several algorithms and seeds, side by side."""

from __future__ import annotations

import copy
from pathlib import Path

from bapo.train.config import ALGOS, Config
from bapo.train.trainer import Trainer
from bapo.viz.report import format_summary, summary_rows, write_report


def run_compare(
    base: Config,
    algos: list[str],
    seeds: int,
    out_dir: str | Path,
    *,
    staleness: int | None = None,
    callbacks=(),
    verbose: bool = True,
) -> dict[str, list[list[dict]]]:
    """Train every (algorithm, seed) pair; write ``report.html`` and ``summary.txt`` in ``out_dir``.

    ``staleness`` sets ``train.epochs`` (one update per epoch when ``mini_batches=1``), so each
    rollout batch is used for that many policy updates.
    """
    for a in algos:
        if a not in ALGOS:
            raise ValueError(f"unknown algorithm {a!r} in --algos: allowed {', '.join(ALGOS)}")
    if seeds < 1:
        raise ValueError(f"--seeds={seeds} is out of range: allowed >= 1")
    if staleness is not None and staleness < 1:
        raise ValueError(f"--staleness={staleness} is out of range: allowed >= 1")
    out = Path(out_dir)
    runs: dict[str, list[list[dict]]] = {}
    for algo in algos:
        for seed in range(seeds):
            cfg = copy.deepcopy(base)
            cfg.algo.name = algo
            cfg.train.seed = base.train.seed + seed
            if staleness is not None:
                cfg.train.epochs = staleness
            cfg.run.out_dir = str(out / f"{algo}-seed{seed}")
            if verbose:
                print(f"== {algo}, seed {cfg.train.seed}, staleness {cfg.staleness} ==", flush=True)
            records = Trainer(cfg.validate(), callbacks=callbacks).train()
            runs.setdefault(algo, []).append(records)
    title = (f"{base.preset}: {', '.join(algos)} at staleness {staleness or base.staleness}, "
             f"{seeds} seed(s)")  # fmt: skip
    write_report(runs, out / "report.html", title)
    table = format_summary(summary_rows(runs))
    (out / "summary.txt").write_text(title + "\n" + table + "\n")
    if verbose:
        print()
        print(title)
        print(table)
        print(f"\nreport: {out / 'report.html'}")
    return runs
