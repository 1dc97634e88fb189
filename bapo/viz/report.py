"""Comparison figures and the self-contained HTML report of ``bapo compare``.

Everything here reads metric records (dicts with a ``step`` and slash-named metrics); nothing
reaches into the trainer.
"""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bapo.loss import BAPOConfig

# (metric, panel title) in the order the report shows them
REPORT_METRICS = [
    ("reward/mean", "reward"),
    ("reward/accuracy", "accuracy (rollouts)"),
    ("entropy/mean", "token entropy"),
    ("bapo/rho", "positive share rho (Eq. 8)"),
    ("bapo/c_high", "c_high"),
    ("bapo/c_low", "c_low"),
    ("clip/high_frac", "clipped: A>0, r >= c_high"),
    ("clip/low_frac", "clipped: A<0, r <= c_low"),
    ("policy/grad_norm", "grad norm"),
]
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def metric_band(runs: list[list[dict]], key: str):
    """Per step: mean, min and max of ``key`` over runs (seeds).  Steps missing in a run are
    skipped for that run."""
    by_step: dict[int, list[float]] = {}
    for records in runs:
        for r in records:
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                by_step.setdefault(int(r["step"]), []).append(float(v))
    steps = sorted(by_step)
    mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
    lo = [min(by_step[s]) for s in steps]
    hi = [max(by_step[s]) for s in steps]
    return steps, mean, lo, hi


def compare_figure(
    runs: dict[str, list[list[dict]]], metrics=REPORT_METRICS, cols: int = 3, title: str = ""
) -> go.Figure:
    """One panel per metric; per algorithm the mean over seeds and a min-max band."""
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for _, t in metrics])
    for a, (algo, seeds) in enumerate(runs.items()):
        color = COLORS[a % len(COLORS)]
        for i, (key, _t) in enumerate(metrics):
            steps, mean, lo, hi = metric_band(seeds, key)
            if not steps:
                continue
            row, col = i // cols + 1, i % cols + 1
            if len(seeds) > 1:
                fig.add_trace(
                    go.Scatter(x=steps + steps[::-1], y=hi + lo[::-1], fill="toself",
                               fillcolor=color, opacity=0.15, line=dict(width=0),
                               hoverinfo="skip", showlegend=False, legendgroup=algo),
                    row, col,
                )  # fmt: skip
            fig.add_trace(
                go.Scatter(x=steps, y=mean, name=algo, line=dict(color=color),
                           legendgroup=algo, showlegend=i == 0),
                row, col,
            )  # fmt: skip
    for i, (key, _t) in enumerate(metrics):
        if key == "bapo/rho":  # the paper's target share rho0
            fig.add_hline(y=BAPOConfig.rho0, line_dash="dash", annotation_text="rho0",
                          row=i // cols + 1, col=i % cols + 1)  # fmt: skip
    fig.update_layout(height=280 * rows, title=title or None, margin=dict(t=60, b=30))
    return fig


def summary_rows(runs: dict[str, list[list[dict]]], last: int = 5) -> list[dict]:
    """Per algorithm: final entropy, mean rho, final accuracy (mean +- std over seeds).

    "Final" averages the last ``last`` steps of each run (eval accuracy: its last value)."""

    def per_seed(records, key, tail):
        vals = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        vals = [v for v in vals if math.isfinite(v)]  # a step with no signal logs rho = nan
        vals = vals[-tail:] if tail else vals
        return sum(vals) / len(vals) if vals else float("nan")

    rows = []
    for algo, seeds in runs.items():
        row = {"algo": algo, "seeds": len(seeds)}
        for name, key, tail in [
            ("final_entropy", "entropy/mean", last),
            ("mean_rho", "bapo/rho", 0),
            ("final_accuracy", "reward/accuracy", last),
            ("final_eval_accuracy", "eval/accuracy", 1),
            ("mean_c_high", "bapo/c_high", 0),
            ("mean_c_low", "bapo/c_low", 0),
        ]:
            vals = [per_seed(r, key, tail) for r in seeds]
            vals = [v for v in vals if math.isfinite(v)]
            m = sum(vals) / len(vals) if vals else float("nan")
            sd = (sum((v - m) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5 if vals else 0.0
            row[name], row[name + "_std"] = m, sd
        rows.append(row)
    return rows


def format_summary(rows: list[dict]) -> str:
    head = (
        f"{'algorithm':14s} {'final entropy':>16s} {'mean rho':>14s} {'final acc':>14s}"
        f" {'eval acc':>14s} {'c_low':>6s} {'c_high':>6s}"
    )
    lines = [head, "-" * len(head)]

    def cell(row, k):
        return f"{row[k]:.3f} ± {row[k + '_std']:.3f}"

    for r in rows:
        lines.append(
            f"{r['algo']:14s} {cell(r, 'final_entropy'):>16s} {cell(r, 'mean_rho'):>14s}"
            f" {cell(r, 'final_accuracy'):>14s} {cell(r, 'final_eval_accuracy'):>14s}"
            f" {r['mean_c_low']:6.3f} {r['mean_c_high']:6.3f}"
        )
    return "\n".join(lines)


def write_report(
    runs: dict[str, list[list[dict]]], path: str | Path, title: str, notes: str = ""
) -> Path:
    """A single HTML file (plotly.js inlined) with the comparison figure and the summary table."""
    path = Path(path)
    fig = compare_figure(runs, title=title)
    table = format_summary(summary_rows(runs))
    body = fig.to_html(full_html=False, include_plotlyjs=True)
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body style='font-family:sans-serif'>"
        f"<h2>{title}</h2><pre>{table}</pre><p>{notes}</p>{body}</body></html>"
    )
    path.write_text(html)
    return path
