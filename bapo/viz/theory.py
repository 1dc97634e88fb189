"""Figures and widgets for the Entropy-Clip Rule (Eq. 6, App. B; notebook 01).

The widget callback :func:`clip_rule_view` is a plain function: ``(c_low, c_high, staleness,
seed) -> ClipRuleView`` (a figure and the numbers it shows), so tests call it without a browser.
:func:`make_clip_rule_widget` only wires ipywidgets sliders to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from bapo.loss import FixedClip
from bapo.theory import (
    QUADRANTS,
    SimResult,
    TokenDecomposition,
    decompose,
    entropy,
    exact_delta_h,
    expected_logit_step,
    stale_logits,
    toy_policy,
)
from bapo.viz.report import ALGO_STYLE

__all__ = [
    "ClipRuleView",
    "clip_rule_view",
    "make_clip_rule_widget",
    "prediction_figure",
    "quadrant_figure",
    "results_table",
    "simulation_figure",
]

LOWERS, RAISES, CLIPPED = "#d62728", "#1f77b4", "#b0b0b0"  # dH < 0, dH > 0, X = 0
# the package's one colour (and dash) per algorithm, as in every other figure (viz.report)
RULE_STYLE = {
    "GRPO [0.8, 1.2]": ALGO_STYLE["grpo"],
    "clip-higher [0.8, 1.28]": ALGO_STYLE["clip-higher"],
    "BAPO": ALGO_STYLE["bapo"],
}
NOISE = 1e-12  # |dH| below this is float round-off (staleness 1: exactly 0 up to 1e-16)


def _sign_colour(values: torch.Tensor, keep: torch.Tensor) -> list[str]:
    return [
        CLIPPED if not k else (LOWERS if v < 0 else RAISES)
        for v, k in zip(values.tolist(), keep.tolist())
    ]


# ----------------------------------------------------------------------------------------------
# 1. The four quadrants (Definition 1, Table 4)
# ----------------------------------------------------------------------------------------------
def quadrant_figure(dec: TokenDecomposition, title: str | None = None) -> go.Figure:
    """Tokens by probability (log x) and advantage (y), coloured by the sign of ``dH(y_s)``.

    The dashed lines are Definition 1's thresholds: ``exp(E_pi[log pi])`` and the advantage
    baseline.  Each quadrant is labelled with Table 4's sign; marker area follows ``|dH(y_s)|``;
    clipped tokens (``X = 0``, no contribution, App. B.4.1) are grey.
    """
    p = dec.probs.numpy()
    a = dec.advantages.numpy()
    dh = dec.delta_h.numpy()
    threshold = float(np.exp((p * dec.log_probs.numpy()).sum()))
    size = 8 + 30 * np.sqrt(np.abs(dh) / max(np.abs(dh).max(), 1e-300))
    labels = dec.quadrants
    text = [
        f"token {i}<br>pi={p[i]:.4f}<br>A={a[i]:+.3f}<br>dH={dh[i]:+.2e}<br>{labels[i]}"
        + ("" if dec.keep[i] else "<br>clipped (X=0)")
        for i in range(len(p))
    ]
    fig = go.Figure()
    for name, colour, where in (
        ("dH(y_s) < 0: sharpens", LOWERS, dec.keep.numpy() & (dh < 0)),
        ("dH(y_s) > 0: smooths", RAISES, dec.keep.numpy() & (dh >= 0)),
        ("clipped: X = 0", CLIPPED, ~dec.keep.numpy()),
    ):
        idx = np.nonzero(where)[0]
        fig.add_trace(
            go.Scatter(
                x=p[idx], y=a[idx], mode="markers", name=name,
                marker=dict(color=colour, size=size[idx], line=dict(width=1, color="white")),
                text=[text[i] for i in idx], hoverinfo="text",
            )
        )  # fmt: skip
    fig.add_vline(x=threshold, line_dash="dash", line_color="grey")
    fig.add_hline(y=dec.baseline, line_dash="dash", line_color="grey")
    x_lo, x_hi = float(np.log10(p.min())) - 0.2, float(np.log10(p.max())) + 0.2
    spread = float(a.max() - a.min()) or 1.0
    y_lo, y_hi = float(a.min()) - 0.1 * spread, float(a.max()) + 0.1 * spread
    lx = {True: (np.log10(threshold) + x_hi) / 2, False: (x_lo + np.log10(threshold)) / 2}
    ly = {True: y_hi - 0.03 * spread, False: y_lo + 0.03 * spread}
    for (high_p, high_a), label in QUADRANTS.items():
        sign = "dH < 0" if high_p == high_a else "dH > 0"
        fig.add_annotation(
            x=lx[high_p], y=ly[high_a], text=f"{label}<br><b>{sign}</b>", showarrow=False,
            font=dict(color=LOWERS if high_p == high_a else RAISES),
        )  # fmt: skip
    fig.update_xaxes(type="log", range=[x_lo, x_hi], title_text="probability pi(y_s)")
    fig.update_yaxes(range=[y_lo, y_hi], title_text="advantage A(y_s)")
    fig.update_layout(
        height=460,
        title=title or "Table 4: which tokens sharpen and which smooth the policy",
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


# ----------------------------------------------------------------------------------------------
# 2. The slider: bounds and staleness against the predicted and the measured dH
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipRuleView:
    """What the clip-rule slider shows: the figure and its numbers.

    ``predicted`` is Eq. 6 (Lemma 1 of the step; the sum of the per-token bars), ``measured``
    the exact ``H(after) - H(before)``; ``b42_definition1`` the sum of App. B.4.2's terms with
    Definition 1's baseline ``E_retained[A]``.
    """

    figure: go.Figure
    n_tokens: int
    n_clipped_high: int
    n_clipped_low: int
    predicted: float
    measured: float
    b42_definition1: float
    entropy: float
    decomposition: TokenDecomposition

    @property
    def text(self) -> str:
        return (
            f"H = {self.entropy:.4f}; clipped: {self.n_clipped_high} high (A>0, r>=c_high), "
            f"{self.n_clipped_low} low (A<0, r<=c_low) of {self.n_tokens} tokens\n"
            f"predicted dH (Eq. 6, sum of bars) = {self.predicted:+.5f}\n"
            f"measured  dH (exact)              = {self.measured:+.5f}\n"
            f"B.4.2 with Definition 1's baseline E_retained[A]: sum = {self.b42_definition1:+.5f}"
        )


def clip_rule_view(
    c_low: float = 0.8,
    c_high: float = 1.2,
    staleness: int = 1,
    seed: int = 0,
    *,
    n_tokens: int = 16,
    lr: float = 0.3,
) -> ClipRuleView:
    """The slider's callback: one clipped step on a toy policy, predicted against measured.

    ``pi_rollout`` and the advantages come from :func:`bapo.theory.toy_policy`; the current
    policy has already taken ``staleness - 1`` epochs on the same data
    (:func:`bapo.theory.stale_logits`), and the figure shows epoch ``staleness``: the Eq. 6 step
    (natural form) with ``X`` from the loss core's :func:`bapo.loss.clip_regions`.  Left: each
    token's ratio against the bounds; right: each token's share of ``dH`` (App. B.4.2 with the
    advantage measured from 0, so the bars sum to Eq. 6 and clipped tokens give exactly 0).
    """
    clip = FixedClip(c_low, c_high)
    z_old, adv = toy_policy(seed, n_tokens)
    z = stale_logits(z_old, adv, clip, int(staleness), lr)
    step = expected_logit_step(z, z_old, adv, clip, lr, natural=True)
    dec = decompose(z, adv, step.keep, lr, baseline=0.0)
    paper = decompose(z, adv, step.keep, lr)
    measured = exact_delta_h(z, step.dz)

    order = torch.argsort(torch.softmax(z_old, -1), descending=True)
    names = [f"y{i}" for i in order.tolist()]
    keep, ratio, a = step.keep[order], step.ratio[order], adv[order]
    high = (~keep) & (a > 0)
    low = (~keep) & (a < 0)
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.1,
        subplot_titles=(
            "ratio r = pi / pi_rollout",
            f"dH per token: sum {dec.eq6:+.4f}, measured {measured:+.4f}",
        ),
    )  # fmt: skip
    bar_colour = [
        CLIPPED if not k else ("#2ca02c" if v > 0 else "#9467bd")
        for v, k in zip(a.tolist(), keep.tolist())
    ]
    hover = [
        f"{n}: r={r:.3f}, A={v:+.3f}" + ("" if k else " (clipped)")
        for n, r, v, k in zip(names, ratio.tolist(), a.tolist(), keep.tolist())
    ]
    fig.add_trace(
        go.Bar(x=names, y=ratio.tolist(), marker_color=bar_colour, name="r", showlegend=False,
               hovertext=hover, hoverinfo="text"),
        1, 1,
    )  # fmt: skip
    for bound in (c_low, c_high):
        fig.add_hline(y=bound, line_dash="dash", line_color="black", row=1, col=1)
    fig.add_trace(
        go.Bar(x=names, y=dec.delta_h[order].tolist(),
               marker_color=_sign_colour(dec.delta_h[order], keep), name="dH(y_s)",
               showlegend=False,
               hovertext=[q for q in np.array(dec.quadrants)[order.numpy()]], hoverinfo="text+y"),
        1, 2,
    )  # fmt: skip
    # a legend for the colours (the bars themselves stay out of it)
    for label, colour in (
        ("r: A > 0, kept", "#2ca02c"),
        ("r: A < 0, kept", "#9467bd"),
        ("clipped (X = 0)", CLIPPED),
        ("dH > 0 (raises entropy)", RAISES),
        ("dH < 0 (lowers entropy)", LOWERS),
    ):
        fig.add_trace(go.Bar(x=[None], y=[None], marker_color=colour, name=label,
                             showlegend=True), 1, 1)  # fmt: skip
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="c_low, c_high",
                             line=dict(dash="dash", color="black")), 1, 1)  # fmt: skip
    fig.update_yaxes(range=[min(0.5, c_low - 0.1), max(1.5, c_high + 0.1)], row=1, col=1)
    fig.update_yaxes(title_text="r", row=1, col=1)
    fig.update_yaxes(title_text="nats", row=1, col=2)
    fig.update_xaxes(title_text="token (most probable under pi_rollout first)", row=1, col=1)
    fig.update_xaxes(title_text="token", row=1, col=2)
    fig.update_annotations(font_size=12)  # two titles side by side at a notebook's 700 px
    fig.update_layout(
        height=430, bargap=0.15, legend=dict(orientation="h", y=-0.3),
        title=f"[c_low, c_high] = [{c_low:.2f}, {c_high:.2f}], epoch {staleness} on the same data",
    )  # fmt: skip
    return ClipRuleView(
        figure=fig,
        n_tokens=n_tokens,
        n_clipped_high=int(high.sum()),
        n_clipped_low=int(low.sum()),
        predicted=dec.eq6,
        measured=measured,
        b42_definition1=paper.total,
        entropy=float(entropy(z)),
        decomposition=dec,
    )


def make_clip_rule_widget(**kwargs):
    """Sliders for ``c_low``, ``c_high``, staleness and seed, wired to :func:`clip_rule_view`.

    ``kwargs`` go to :func:`clip_rule_view` (``n_tokens``, ``lr``).  Returns a ``VBox`` (sliders,
    the figure redrawn in place, the view's text); its ``result`` is the latest
    :class:`ClipRuleView`.
    """
    import html

    import ipywidgets as w

    from bapo.viz.figures import live_figure

    text = w.HTML()
    latest: dict[str, ClipRuleView] = {}

    def make(c_low: float, c_high: float, staleness: int, seed: int) -> go.Figure:
        view = clip_rule_view(c_low, c_high, staleness, seed, **kwargs)
        latest["view"] = view
        text.value = f"<pre>{html.escape(view.text)}</pre>"
        return view.figure

    slider = dict(continuous_update=False, style={"description_width": "initial"})
    controls = {
        "c_low": w.FloatSlider(value=0.8, min=0.5, max=0.99, step=0.01, description="c_low",
                               **slider),
        "c_high": w.FloatSlider(value=1.2, min=1.01, max=3.0, step=0.01, description="c_high",
                                **slider),
        "staleness": w.IntSlider(value=4, min=1, max=32, description="staleness (epoch)",
                                 **slider),
        "seed": w.IntSlider(value=0, min=0, max=20, description="seed", **slider),
    }  # fmt: skip
    box = live_figure(make, controls)
    box.children = (*box.children, text)

    def keep_result(_change=None):  # runs after live_figure's redraw (observers run in order)
        box.result = latest["view"]

    keep_result()
    for c in controls.values():
        c.observe(keep_result, names="value")
    return box


# ----------------------------------------------------------------------------------------------
# 3. Predicted against measured
# ----------------------------------------------------------------------------------------------
def prediction_figure(
    predicted: torch.Tensor, measured: torch.Tensor, title: str | None = None
) -> go.Figure:
    """Scatter of Lemma 1's predicted ``dH`` against the measured one, with ``y = x``."""
    x, y = predicted.numpy(), measured.numpy()
    corr = float(np.corrcoef(x, y)[0, 1])
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    fig = go.Figure(go.Scatter(x=x, y=y, mode="markers", name="policies", marker=dict(size=6)))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                             line=dict(dash="dash", color="grey")))  # fmt: skip
    fig.update_layout(
        height=420,
        title=title or f"Eq. 6 / Lemma 1 against the exact change: correlation {corr:.4f}",
        xaxis_title="predicted dH (first order)",
        yaxis_title="measured dH = H(after) - H(before)",
    )
    return fig


# ----------------------------------------------------------------------------------------------
# 4. The simulator
# ----------------------------------------------------------------------------------------------
def _mean(runs: list[SimResult], field: str) -> np.ndarray:
    return np.mean([getattr(r, field).numpy() for r in runs], axis=0)


def simulation_figure(results: dict[tuple[str, int], list[SimResult]]) -> go.Figure:
    """Entropy, reward and the entropy clipping held back, per rule, one column per staleness.

    Lines are means over the seeds.  The last row is the running sum of ``dh_clip_effect``: above
    0, clipping kept entropy up (it held back entropy-lowering updates); below 0, it held back
    entropy-raising ones, the paper's account of entropy collapse in LLMs.  Each row shares one
    y axis across staleness levels, and values under 1e-12 (round-off: nothing is clipped at
    staleness 1) are drawn as 0, so no panel magnifies float noise.
    """
    stalenesses = sorted({e for _, e in results})
    rules = list(dict.fromkeys(name for name, _ in results))
    fig = make_subplots(
        rows=3, cols=len(stalenesses), shared_xaxes=True, shared_yaxes=True, vertical_spacing=0.07,
        subplot_titles=[f"staleness {e}" for e in stalenesses],
    )  # fmt: skip
    palette = iter([("#d62728", "dot"), ("#8c564b", "dashdot"), ("#e377c2", "dot")])
    styles = {r: RULE_STYLE.get(r) or next(palette) for r in rules}
    for col, e in enumerate(stalenesses, start=1):
        for rule in rules:
            runs = results.get((rule, e))
            if not runs:
                continue
            series = (
                _mean(runs, "entropy"),
                _mean(runs, "reward"),
                np.concatenate([[0.0], np.cumsum(_mean(runs, "dh_clip_effect"))]),
            )
            series = (*series[:2], np.where(np.abs(series[2]) < NOISE, 0.0, series[2]))
            for row, y in enumerate(series, start=1):
                fig.add_trace(
                    go.Scatter(y=y, mode="lines", name=rule, legendgroup=rule,
                               showlegend=(row == 1 and col == 1),
                               line=dict(color=styles[rule][0], dash=styles[rule][1], width=2)),
                    row, col,
                )  # fmt: skip
    labels = ("entropy H (nats)", "expected reward", "dH held back by clip (nats)")
    for row, label in enumerate(labels, 1):
        fig.update_yaxes(title_text=label, row=row, col=1)
    for col in range(1, len(stalenesses) + 1):
        fig.update_xaxes(title_text="update step", row=3, col=col)
    fig.update_layout(height=720, title="Stale data on a bandit: GRPO, clip-higher and BAPO")
    return fig


def results_table(results: dict[tuple[str, int], list[SimResult]]) -> str:
    """A text table of the runs (means over seeds).

    End entropy and reward; mean ``rho``, clip fractions and bounds; the summed ``dh_clip_effect``
    (entropy clipping held back); the share of the batch clipped in Table 4's entropy-lowering
    and entropy-raising quadrants.
    """
    head = (
        f"{'rule':24s} {'E':>3s} {'H end':>6s} {'reward':>6s} {'rho':>5s} {'clip hi':>7s} "
        f"{'clip lo':>7s} {'c_low':>5s} {'c_high':>6s} {'clip dH':>7s} {'cut dH<0':>8s} "
        f"{'cut dH>0':>8s}"
    )
    lines = [head, "-" * len(head)]
    for (rule, e), runs in results.items():
        end = {f: float(np.mean([getattr(r, f)[-1].item() for r in runs])) for f in _END}
        m = {f: float(np.nanmean(_mean(runs, f))) for f in _MEAN}
        effect = float(np.mean([r.dh_clip_effect.sum().item() for r in runs]))
        lines.append(
            f"{rule:24s} {e:3d} {end['entropy']:6.3f} {end['reward']:6.3f} {m['rho']:5.3f} "
            f"{m['clip_high']:7.2%} {m['clip_low']:7.2%} {m['c_low']:5.3f} {m['c_high']:6.3f} "
            f"{effect:+7.3f} {m['clipped_lowering']:8.2%} {m['clipped_raising']:8.2%}"
        )
    return "\n".join(lines)


_END = ("entropy", "reward")
_MEAN = ("rho", "clip_high", "clip_low", "c_low", "c_high", "clipped_lowering", "clipped_raising")
