"""Comparison figures and the self-contained HTML report of ``bapo compare``.

Everything here reads metric records (dicts with a ``step`` and slash-named metrics); nothing
reaches into the trainer.
"""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bapo.glossary import describe
from bapo.loss import BAPOConfig

# (metric, panel title) in the order the report shows them
REPORT_METRICS = [
    ("reward/mean", "reward"),
    ("reward/accuracy", "accuracy (rollouts)"),
    ("entropy/mean", "token entropy"),
    ("bapo/rho", "positive share rho (Eq. 8)"),
    ("bapo/c_high", "c_high"),
    ("bapo/c_low", "c_low"),
    ("clip/high_frac", "clipped: A>0, r > c_high"),
    ("clip/low_frac", "clipped: A<0, r < c_low"),
    ("policy/grad_norm", "grad norm"),
]
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
# One colour and one dash per algorithm in every figure of the package; dashes keep coinciding
# lines visible (GRPO's bounds under clip-higher's).  An arm "bapo S=4" takes "bapo"'s colour;
# its staleness level picks the dash.
ALGO_STYLE = {
    "grpo": ("#1f77b4", "solid"),
    "clip-higher": ("#ff7f0e", "dash"),
    "bapo": ("#2ca02c", "solid"),
    "bapo-official": ("#9467bd", "dot"),
    "fixed": ("#8c564b", "dashdot"),
}
_LEVEL_DASH = ["solid", "dash", "dot", "dashdot", "longdash"]
# the y-axis title of a report panel, by metric
AXIS_TITLES = {
    "reward/mean": "reward", "reward/accuracy": "share of answers", "entropy/mean": "nats/token",
    "bapo/rho": "share of the loss", "bapo/c_high": "ratio bound", "bapo/c_low": "ratio bound",
    "clip/high_frac": "share of tokens", "clip/low_frac": "share of tokens",
    "clip/frac": "share of tokens", "policy/grad_norm": "L2 norm",
}  # fmt: skip


def arm_style(name: str, index: int = 0) -> tuple[str, str]:
    """``(colour, dash)`` of an arm such as ``"bapo"``, ``"bapo S=4"`` or ``"grpo partial"``:
    the algorithm sets the colour, a staleness suffix the dash; unknown names cycle."""
    algo, _, rest = name.partition(" ")
    if algo not in ALGO_STYLE:
        return COLORS[index % len(COLORS)], "solid"
    color, dash = ALGO_STYLE[algo]
    if rest.startswith("S="):
        levels = {"1": 0, "2": 1, "4": 1, "8": 2, "16": 3}
        dash = _LEVEL_DASH[levels.get(rest[2:].split()[0], 4)]
    return color, dash


def _hover_line(key: str, width: int = 60) -> str:
    """The glossary's meaning of ``key``, wrapped for a hover box (``key`` itself if unknown)."""
    try:
        e = describe(key)
    except KeyError:
        return key
    words, lines, line = f"{key}: {e.meaning} [{e.unit}]".split(), [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return "<br>".join([*lines, line])


X_AXES = {"step": "step", "updates": "optimizer updates"}


def panel_grid(metrics, cols: int, title: str = "", x: str = "step") -> go.Figure:
    """The empty panels of :func:`compare_figure`: titles, axis titles with units, the ``rho0``
    line.  The live dashboard starts from it, so its axes are there before the first step."""
    if x not in X_AXES:
        raise ValueError(f"x={x!r} is not allowed: use 'step' or 'updates'")
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[t for _, t in metrics],
        vertical_spacing=min(0.5 / rows, 0.14), horizontal_spacing=0.09,
    )  # fmt: skip
    for i, (key, _t) in enumerate(metrics):
        row, col = i // cols + 1, i % cols + 1
        fig.update_xaxes(title_text=X_AXES[x], title_standoff=4, row=row, col=col)
        fig.update_yaxes(title_text=AXIS_TITLES.get(key, ""), row=row, col=col)
        if key == "bapo/rho":  # the paper's target share rho0
            fig.add_hline(y=BAPOConfig.rho0, line_dash="dash", annotation_text="rho0",
                          exclude_empty_subplots=False, row=row, col=col)  # fmt: skip
    fig.update_annotations(font_size=13)  # subplot titles that fit three to a notebook row
    fig.update_layout(height=250 * rows + 40, title=title or None,
                      margin=dict(t=60 if title else 40, b=30, l=60, r=20))  # fmt: skip
    return fig


def _x_values(records: list[dict], x: str) -> list[float]:
    """Each record's position: its step, or the optimizer updates made by the end of it."""
    if x == "step":
        return [int(r["step"]) for r in records]
    if x != "updates":
        raise ValueError(f"x={x!r} is not allowed: use 'step' or 'updates'")
    total, out = 0, []
    for r in records:
        total += int(r.get("offpolicy/updates", 1))
        out.append(total)
    return out


def metric_band(runs: list[list[dict]], key: str, x: str = "step"):
    """Per step (or per update count, ``x="updates"``): mean, min and max of ``key`` over runs
    (seeds).  Positions missing in a run are skipped for that run."""
    by_step: dict[int, list[float]] = {}
    for records in runs:
        for pos, r in zip(_x_values(records, x), records):
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                by_step.setdefault(pos, []).append(float(v))
    steps = sorted(by_step)
    mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
    lo = [min(by_step[s]) for s in steps]
    hi = [max(by_step[s]) for s in steps]
    return steps, mean, lo, hi


def compare_figure(
    runs: dict[str, list[list[dict]]],
    metrics=REPORT_METRICS,
    cols: int = 3,
    title: str = "",
    x: str = "step",
) -> go.Figure:
    """One panel per metric; per algorithm the mean over seeds and a min-max band.

    ``x="updates"`` puts runs on one axis of optimizer updates: the axis on which staleness
    levels matched by updates line up (a staleness-4 step makes 4 updates)."""
    fig = panel_grid(metrics, cols, title, x)
    for a, (algo, seeds) in enumerate(runs.items()):
        color, dash = arm_style(algo, a)
        for i, (key, _t) in enumerate(metrics):
            steps, mean, lo, hi = metric_band(seeds, key, x)
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
                go.Scatter(x=steps, y=mean, name=algo, line=dict(color=color, dash=dash),
                           legendgroup=algo, showlegend=i == 0,
                           hovertemplate=hover_template(algo, key, len(seeds))),
                row, col,
            )  # fmt: skip
    return fig


def hover_template(arm: str, key: str, seeds: int = 1) -> str:
    """Hover text of a metric line: the arm, step and value, then the glossary's meaning."""
    what = f"mean of {seeds} seeds" if seeds > 1 else "value"
    return f"<b>{arm}</b> at %{{x}}: {what} %{{y:.4g}}<br>{_hover_line(key)}<extra></extra>"


SUMMARY_COLUMNS = [  # (row key, metric, steps averaged per seed: 0 = all, header)
    ("final_entropy", "entropy/mean", "last", "final entropy"),
    ("mean_rho", "bapo/rho", 0, "mean rho"),
    ("final_accuracy", "reward/accuracy", "last", "final acc"),
    ("final_eval_accuracy", "eval/accuracy", 1, "eval acc"),
    ("mean_clip_frac", "clip/frac", 0, "clipped"),
    ("mean_c_low", "bapo/c_low", 0, "c_low"),
    ("mean_c_high", "bapo/c_high", 0, "c_high"),
]


def summary_rows(runs: dict[str, list[list[dict]]], last: int = 5) -> list[dict]:
    """Per arm: final entropy, mean rho, final accuracy, clipped share and bounds, each as the
    mean over seeds with ``_std`` (sample standard deviation) and ``_ci`` (half-width of the 95%
    Student-t interval; nan for one seed).

    "Final" averages the last ``last`` steps of each run (eval accuracy: its last value)."""
    from bapo.study import mean_ci

    def per_seed(records, key, tail):
        vals = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        vals = [v for v in vals if math.isfinite(v)]  # a step with no signal logs rho = nan
        vals = vals[-tail:] if tail else vals
        return sum(vals) / len(vals) if vals else float("nan")

    rows = []
    for algo, seeds in runs.items():
        row = {"algo": algo, "seeds": len(seeds)}
        for name, key, tail, _head in SUMMARY_COLUMNS:
            vals = [per_seed(r, key, last if tail == "last" else tail) for r in seeds]
            vals = [v for v in vals if math.isfinite(v)]
            m, ci = mean_ci(vals)
            sd = (sum((v - m) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5 if vals else 0.0
            row[name], row[name + "_std"], row[name + "_ci"] = m, sd, ci
        rows.append(row)
    return rows


def format_summary(rows: list[dict]) -> str:
    """The summary as a text table: ``mean ± 95% half-width`` over seeds (the interval is left
    out for a single seed); columns that no run logged are left out."""
    shown = [c for c in SUMMARY_COLUMNS if any(math.isfinite(r[c[0]]) for r in rows)]
    width = max([14] + [len(r["algo"]) for r in rows])
    several = any(r["seeds"] > 1 for r in rows)
    w = 16 if several else 8

    def cell(row, k):
        m, ci = row[k], row[k + "_ci"]
        if not math.isfinite(m):
            return "-"
        return f"{m:.3f} ± {ci:.3f}" if math.isfinite(ci) else f"{m:.3f}"

    head = f"{'arm':{width}s} {'seeds':>5s}" + "".join(f" {h:>{w}s}" for _, _, _, h in shown)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f" {cell(r, k):>{w}s}" for k, _, _, _ in shown)
        lines.append(f"{r['algo']:{width}s} {r['seeds']:5d}{cells}")
    if several:
        lines.append("(mean ± half-width of the 95% t-interval over seeds)")
    return "\n".join(lines)


def panel_legend(metrics) -> str:
    """An HTML list: each panel's title and what its metric means (from :mod:`bapo.glossary`)."""
    import html as _html

    items = []
    for key, title in metrics:
        try:
            e = describe(key)
            text = f"{e.meaning} [{e.unit}]"
        except KeyError:
            text = key
        items.append(
            f"<li><b>{_html.escape(title)}</b> (<code>{key}</code>): {_html.escape(text)}</li>"
        )
    return "<ul style='font-size:90%'>" + "".join(items) + "</ul>"


def write_report(
    runs: dict[str, list[list[dict]]],
    path: str | Path,
    title: str,
    notes: str = "",
    x: str = "step",
) -> Path:
    """A single HTML file (plotly.js inlined) with the comparison figure and the summary table.

    ``x="updates"`` when the arms differ in staleness (see :func:`compare_figure`)."""
    path = Path(path)
    fig = compare_figure(runs, title=title, x=x)
    table = format_summary(summary_rows(runs))
    body = fig.to_html(full_html=False, include_plotlyjs=True)
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body style='font-family:sans-serif;max-width:1200px'>"
        f"<h2>{title}</h2><pre>{table}</pre><p>{notes}</p>{body}"
        f"<h3>What each panel shows</h3>{panel_legend(REPORT_METRICS)}"
        "<p>Lines are means over seeds; shaded bands span the lowest to the highest seed. Hover"
        " over a line for its value and meaning. Every metric is defined in docs/glossary.md.</p>"
        "</body></html>"
    )
    path.write_text(html)
    return path
