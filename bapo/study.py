"""Measuring what a run showed: the paper's premise, intervals over seeds, and checked claims.

Everything here reads the records a run writes (``metrics.jsonl`` rows, one per step, and
``updates.jsonl`` rows, one per optimizer update); nothing reaches into the trainer.

* :func:`premise` - the numbers behind BAPO's premise on one run: wrong vs right completion
  lengths, the share of updates whose positive share ``rho`` (Eq. 8) sits below ``rho0``, how
  many tokens the bounds clip (Eq. 7), and whether the run learned;
* :func:`mean_ci` - mean and 95% Student-t interval over seeds;
* :func:`expect` - a claim checked against the numbers: notebooks state what a run shows through
  it, so a notebook fails when its words and its outputs part.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "ClaimError",
    "Premise",
    "expect",
    "load_run",
    "mean_ci",
    "premise",
    "t_quantile_975",
]


class ClaimError(AssertionError):
    """A sentence about a run that its numbers do not support."""


class Checked(str):
    """The line :func:`expect` printed.  A notebook cell ending in ``expect(...)`` shows it once:
    IPython displays nothing more for it (no ``Out[]`` echo of the printed line)."""

    def _ipython_display_(self) -> None:
        pass


def expect(condition: bool, claim: str, **numbers: float) -> str:
    """Check ``claim`` against a run: raise :class:`ClaimError` with ``numbers`` when
    ``condition`` is false, else print and return ``"checked: <claim> (numbers)"`` (a
    :class:`Checked` string, which notebooks do not echo a second time)."""
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
    if not condition:
        raise ClaimError(f"claim not supported by this run: {claim} ({shown})")
    line = f"checked: {claim}" + (f" ({shown})" if shown else "")
    print(line)
    return Checked(line)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (then the normal's 1.96).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df={df} is out of range: allowed integers >= 1")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over the finite ``values`` (one per seed);
    the half-width is nan for fewer than two values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, t_quantile_975(len(xs) - 1) * sd / math.sqrt(len(xs))


def _mean(xs: Iterable[float]) -> float:
    v = [float(x) for x in xs if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def _col(rows: Sequence[dict], key: str) -> list[float]:
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))]


def load_run(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """``(metrics, updates)`` rows of a run folder."""
    folder = Path(folder)

    def rows(name):
        p = folder / name
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    return rows("metrics.jsonl"), rows("updates.jsonl")


@dataclass(frozen=True)
class Premise:
    """One run's numbers behind the paper's premise (Section 3, Figures 4-6).

    Halves and fifths are of the run's steps; update rows belong to the step they were made in.
    """

    acc_start: float  # sampled accuracy of the first fifth of steps
    acc_end: float  # ... of the last fifth
    len_right_first_half: float  # mean tokens of a right completion, first half of the steps
    len_wrong_first_half: float  # ... of a wrong one
    len_right_end: float  # last fifth
    len_wrong_end: float
    clip_frac: float  # mean over updates of the share of tokens clipped (Eq. 7)
    rho_first_half: float  # mean positive share of Eq. 8 over the first half's updates
    rho_below_first_half: float  # share of the first half's updates with rho < rho0
    entropy_start: float  # mean token entropy, first fifth
    entropy_end: float  # last fifth

    @property
    def acc_gain(self) -> float:
        return self.acc_end - self.acc_start

    @property
    def length_ratio_first_half(self) -> float:
        return self.len_wrong_first_half / self.len_right_first_half

    @property
    def length_ratio_end(self) -> float:
        return self.len_wrong_end / self.len_right_end

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d.update(acc_gain=self.acc_gain, length_ratio_first_half=self.length_ratio_first_half,
                 length_ratio_end=self.length_ratio_end)  # fmt: skip
        return d


def premise(metrics: Sequence[dict], updates: Sequence[dict], rho0: float = 0.4) -> Premise:
    """The premise numbers of one run from its step and update records.

    Completion lengths are averaged per step and then over steps (a step where every answer was
    right has no wrong length and is skipped for that mean).
    """
    n = len(metrics)
    if n < 2:
        raise ValueError(f"a run of {n} step(s) has no halves: allowed runs of >= 2 steps")
    half, fifth = n // 2, max(1, n // 5)
    first_half, start, end = metrics[:half], metrics[:fifth], metrics[-fifth:]
    last_step_first_half = int(metrics[half - 1]["step"])
    # updates.jsonl rows carry the number of the step that made them, as metrics.jsonl does
    upd_half = [u for u in updates if int(u["step"]) <= last_step_first_half]
    rhos = [u["bapo/rho"] for u in upd_half if math.isfinite(u.get("bapo/rho", math.nan))]
    return Premise(
        acc_start=_mean(_col(start, "reward/accuracy")),
        acc_end=_mean(_col(end, "reward/accuracy")),
        len_right_first_half=_mean(_col(first_half, "completion/length_correct")),
        len_wrong_first_half=_mean(_col(first_half, "completion/length_wrong")),
        len_right_end=_mean(_col(end, "completion/length_correct")),
        len_wrong_end=_mean(_col(end, "completion/length_wrong")),
        clip_frac=_mean(_col(updates, "clip/frac")),
        rho_first_half=_mean(rhos),
        rho_below_first_half=(sum(r < rho0 for r in rhos) / len(rhos)) if rhos else math.nan,
        entropy_start=_mean(_col(start, "entropy/mean")),
        entropy_end=_mean(_col(end, "entropy/mean")),
    )


# ----------------------------------------------------------------------------------------------
# Tables of a study (scripts/premise_study.py): premise per seed, arms with 95% intervals
# ----------------------------------------------------------------------------------------------
PREMISE_CRITERIA = [  # (label, premise field, test, threshold) - the targets of issue 10
    ("start accuracy in [0.15, 0.40]", "acc_start", "in", (0.15, 0.40)),
    ("wrong/right length, first half >= 2", "length_ratio_first_half", ">=", 2.0),
    ("wrong/right length, last fifth >= 1.5", "length_ratio_end", ">=", 1.5),
    ("clipped tokens >= 3%", "clip_frac", ">=", 0.03),
    ("accuracy gain >= 0.15", "acc_gain", ">=", 0.15),
    ("updates with rho < rho0, first half >= 50%", "rho_below_first_half", ">=", 0.5),
]


def meets(value: float, test: str, threshold) -> bool:
    """Whether ``value`` passes one of :data:`PREMISE_CRITERIA`' tests."""
    if not math.isfinite(value):
        return False
    if test == "in":
        return threshold[0] <= value <= threshold[1]
    return value >= threshold


def _cell(values: Sequence[float], digits: int = 3) -> str:
    m, h = mean_ci(values)
    if not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f} ± {h:.{digits}f}" if math.isfinite(h) else f"{m:.{digits}f}"


def study_tables(results: Sequence[dict], premise_algo: str = "grpo", premise_staleness: int = 4):
    """Markdown tables of a study's ``results.jsonl`` rows: the premise of ``premise_algo`` at
    ``premise_staleness`` (one column per seed, with the targets), then every (algorithm,
    staleness) arm as mean ± 95% half-width over seeds, then Table 4's quadrants."""
    out = []
    prem = sorted(
        (r for r in results if r["algo"] == premise_algo and r["staleness"] == premise_staleness),
        key=lambda r: r["seed"],
    )
    if prem:
        seeds = [r["seed"] for r in prem]
        out.append(f"Premise: {premise_algo} at staleness {premise_staleness}, seeds {seeds}\n")
        out.append(
            "| criterion | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± 95% | met |"
        )
        out.append("|---" * (len(seeds) + 3) + "|")
        for label, key, test, thr in PREMISE_CRITERIA:
            vals = [r["premise"][key] for r in prem]
            m = mean_ci(vals)[0]
            met = sum(meets(v, test, thr) for v in vals)
            out.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals)
                       + f" | {_cell(vals)} | {met}/{len(vals)} seeds, mean {'yes' if meets(m, test, thr) else 'no'} |")  # fmt: skip
        out.append("")
    arms: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        arms.setdefault((r["algo"], r["staleness"]), []).append(r)
    cols = [
        ("entropy (last 5th)", lambda r: r["premise"]["entropy_end"]),
        ("rho (all updates)", lambda r: r["rho"]),
        ("train acc (last 5th)", lambda r: r["premise"]["acc_end"]),
        ("eval acc (end)", lambda r: r["eval_accuracy"]),
        ("clipped A>0", lambda r: r["clip_high"]),
        ("clipped A<0", lambda r: r["clip_low"]),
        ("c_low", lambda r: r["c_low"]),
        ("c_high", lambda r: r["c_high"]),
        ("wrong/right len (1st half)", lambda r: r["premise"]["length_ratio_first_half"]),
    ]
    out.append("Arms: mean ± half-width of the 95% t-interval over seeds\n")
    out.append("| algorithm | S | seeds | " + " | ".join(c for c, _ in cols) + " |")
    out.append("|---" * (len(cols) + 3) + "|")
    for (algo, s), rows in sorted(arms.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = " | ".join(_cell([f(r) for r in rows]) for _, f in cols)
        out.append(f"| {algo} | {s} | {len(rows)} | {cells} |")
    out.append("")
    quads = list(results[0]["quadrants_kept"]) if results else []
    if quads:
        out.append("Table 4 on real batches (Eq. 6 estimate x 1e3 per update, mean over updates and "
                   "seeds): kept = the update's terms, clipped = terms the bounds removed\n")  # fmt: skip
        out.append("| algorithm | S | " + " | ".join(f"{q}: kept / clipped" for q in quads) + " |")
        out.append("|---" * (len(quads) + 2) + "|")
        for (algo, s), rows in sorted(arms.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            cells = []
            for q in quads:
                k = mean_ci([1e3 * r["quadrants_kept"][q] for r in rows])[0]
                c = mean_ci([1e3 * r["quadrants_clipped"][q] for r in rows])[0]
                cells.append(f"{k:+.3f} / {c:+.3f}")
            out.append(f"| {algo} | {s} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
