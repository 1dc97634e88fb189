"""``bapo compare``: the same preset under several algorithms, seeds and staleness levels.

Staleness ``S`` is the number of policy updates each rollout batch serves.  Levels are compared
at a **matched number of optimizer updates**: the preset's ``train.steps`` counts the updates of
its staleness-1 run, and a run at staleness ``S`` makes as many.  Two ways to get ``S``:

``via="epochs"`` (default; the paper's ``ppo_epoch``, Section 5.1)
    ``S`` passes over each batch (``train.epochs = S``) for ``steps / S`` steps: the same updates
    on ``1 / S`` of the fresh samples.
``via="mini-batches"``
    each step samples ``S`` times the preset's prompts and makes one update on each of ``S``
    mini-batches of the preset's size, for ``steps / S`` steps: the same updates, of the same
    size, on the same number of fresh samples; each sample is used once.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from bapo.train.config import ALGOS, Config
from bapo.train.trainer import Trainer
from bapo.viz.report import format_summary, summary_rows, write_report

VIA = ("epochs", "mini-batches")


def staleness_config(base: Config, staleness: int, via: str = "epochs") -> Config:
    """``base`` made ``staleness`` updates stale per batch (see the module docstring)."""
    if via not in VIA:
        raise ValueError(f"via={via!r} is not allowed: use one of {', '.join(VIA)}")
    if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 1:
        raise ValueError(f"--staleness={staleness!r} is out of range: allowed integers >= 1")
    cfg = copy.deepcopy(base)
    t = cfg.train
    if t.epochs != 1 or t.mini_batches != 1:
        raise ValueError(
            f"--staleness needs a preset at staleness 1 (train.epochs=1, train.mini_batches=1); "
            f"got epochs={t.epochs}, mini_batches={t.mini_batches}"
        )
    if t.steps % staleness:
        raise ValueError(
            f"--staleness={staleness} does not divide train.steps={t.steps}: a matched run makes "
            f"train.steps updates in train.steps / staleness rollout steps"
        )
    t.steps //= staleness
    if via == "epochs":
        t.epochs = staleness
    else:
        t.prompts_per_step *= staleness
        t.mini_batches = staleness
    if cfg.run.eval_every:
        cfg.run.eval_every = max(1, cfg.run.eval_every // staleness)
    return cfg


def run_name(algo: str, staleness: int | None, several: bool) -> str:
    """The label of one (algorithm, staleness) arm in reports: ``"bapo"`` or ``"bapo S=4"``."""
    return f"{algo} S={staleness}" if several and staleness is not None else algo


class Progress:
    """Elapsed time and an estimate of the time left.

    ``plan`` lists one key per run (its staleness level).  A run left is estimated by the mean
    time of the finished runs with its key (same level: the same rollouts and updates), or of all
    finished runs while its level has none yet.
    """

    def __init__(self, plan: list, clock=time.monotonic):
        self.clock, self.start = clock, clock()
        self.left = list(plan)
        self.took: dict = {}
        self._mark = self.start

    def done(self, key) -> None:
        now = self.clock()
        self.took.setdefault(key, []).append(now - self._mark)
        self._mark = now
        self.left.remove(key)

    def status(self) -> str:
        if not self.took:
            return ""
        every = [t for ts in self.took.values() for t in ts]
        fallback = sum(every) / len(every)
        left = sum(
            sum(self.took[k]) / len(self.took[k]) if k in self.took else fallback for k in self.left
        )
        return f"; {_clock(self.clock() - self.start)} so far, about {_clock(left)} left"


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def run_compare(
    base: Config,
    algos: list[str],
    seeds: int,
    out_dir: str | Path,
    *,
    staleness: int | list[int] | None = None,
    via: str = "epochs",
    callbacks=(),
    verbose: bool = True,
) -> dict[str, list[list[dict]]]:
    """Train every (algorithm, staleness, seed); write ``report.html`` and ``summary.txt``.

    Returns the step records per arm (``"algo"``, or ``"algo S=k"`` for several staleness
    levels), one list per seed.  Seeds are ``base.train.seed + 0 .. seeds - 1``.
    """
    for a in algos:
        if a not in ALGOS:
            raise ValueError(f"unknown algorithm {a!r} in --algos: allowed {', '.join(ALGOS)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds={seeds!r} is out of range: allowed integers >= 1")
    levels = staleness if isinstance(staleness, list) else [staleness]
    several = len(levels) > 1
    configs = {}
    for s in levels:  # fail on a bad level before any run starts
        configs[s] = base if s is None else staleness_config(base, s, via)
    out = Path(out_dir)
    runs: dict[str, list[list[dict]]] = {}
    total, k = len(levels) * len(algos) * seeds, 0
    clock = Progress([s for s in levels for _ in algos for _ in range(seeds)])
    for s in levels:
        for algo in algos:
            name = run_name(algo, s, several)
            for seed in range(seeds):
                cfg = copy.deepcopy(configs[s])
                cfg.algo.name = algo
                cfg.train.seed = base.train.seed + seed
                tag = f"{algo}-s{s}-seed{seed}" if several else f"{algo}-seed{seed}"
                cfg.run.out_dir = str(out / tag)
                k += 1
                if verbose:
                    print(f"== run {k}/{total}: {algo}, seed {cfg.train.seed}, staleness "
                          f"{cfg.staleness}{clock.status()} ==", flush=True)  # fmt: skip
                records = Trainer(cfg.validate(), callbacks=callbacks).train()
                clock.done(s)
                runs.setdefault(name, []).append(records)
    shown = ",".join(str(s) for s in levels) if levels != [None] else str(base.staleness)
    matched = f" via {via} (matched updates)" if levels != [None] else ""
    title = (f"{base.preset}: {', '.join(algos)} at staleness {shown}{matched}, "
             f"{seeds} seed(s)")  # fmt: skip
    write_report(runs, out / "report.html", title, x="updates" if several else "step")
    table = format_summary(summary_rows(runs))
    (out / "summary.txt").write_text(title + "\n" + table + "\n")
    if verbose:
        print()
        print(title)
        print(table)
        print(f"\nreport: {out / 'report.html'}")
    return runs
