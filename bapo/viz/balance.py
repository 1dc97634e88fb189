"""Gradient balance on a real batch: who carries the loss (Eq. 5, Figure 4), which tokens the
bounds clip (Figure 5), and how BAPO's search moves them (Algorithm 1).

The widget callbacks are plain functions of (batch, c_low, c_high, measure, weight) so tests and
notebooks call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from bapo.loss import clip_regions, contribution_sums, importance_ratio, share
from bapo.viz.figures import live_figure


@dataclass
class TokenBatch:
    """Masked tokens of a batch, flat: current and behaviour log-probs and advantages."""

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor

    @classmethod
    def from_padded(cls, log_probs, old_log_probs, advantages, mask) -> TokenBatch:
        m = mask.bool()
        adv = advantages[:, None].expand_as(m) if advantages.dim() == 1 else advantages
        return cls(log_probs[m].float(), old_log_probs[m].float(), adv[m].float())

    @property
    def ratio(self) -> torch.Tensor:
        return importance_ratio(self.log_probs, self.old_log_probs)


def balance(
    batch: TokenBatch, c_low: float, c_high: float, contribution="gradient", rollout_weight=False
) -> dict:
    """Positive and negative sums of Eq. 8 at these bounds, the share, and clip counts."""
    r = batch.ratio
    w = torch.exp(batch.old_log_probs) if rollout_weight else torch.ones_like(r)
    pos, neg = contribution_sums(r, batch.advantages, w, c_low, c_high, contribution=contribution)
    high, low, _ = clip_regions(r, batch.advantages, c_low, c_high)
    a = batch.advantages
    return {
        "pos": float(pos),
        "neg": float(neg),
        "rho": float(share(pos, neg)),
        "n_pos": int((a > 0).sum()),
        "n_neg": int((a < 0).sum()),
        "clipped_pos": int(high.sum()),
        "clipped_neg": int(low.sum()),
    }


def balance_figure(
    batch: TokenBatch,
    c_low: float = 0.8,
    c_high: float = 1.2,
    contribution: str = "gradient",
    rollout_weight: bool = False,
    rho0: float = 0.4,
) -> go.Figure:
    """Left: each side's share of the loss (Figure 4).  Right: the token map (Figure 5) -
    probability vs importance weight, coloured by advantage sign and clipped or not."""
    b = balance(batch, c_low, c_high, contribution, rollout_weight)
    a = batch.advantages
    n_zero = int((a == 0).sum())
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.3, 0.7], horizontal_spacing=0.12,
        subplot_titles=(f"loss share, rho = {b['rho']:.3f}",
                        "each token: probability vs importance ratio"),
    )  # fmt: skip
    total = max(b["pos"] + b["neg"], 1e-300)
    # token counts go in the category labels, so the rho0 line crosses no text
    fig.add_trace(
        go.Bar(x=[f"A>0<br>{b['n_pos']} tokens", f"A<0<br>{b['n_neg']} tokens"],
               y=[b["pos"] / total, b["neg"] / total],
               marker_color=["#2ca02c", "#d62728"], showlegend=False,
               hovertemplate="%{x}: %{y:.3f} of the loss<extra></extra>"),
        1, 1,
    )  # fmt: skip
    fig.add_hline(y=rho0, line_dash="dash", row=1, col=1)
    # rho0 is named among the y-axis ticks: no bar or bar label lies under its label
    ticks = sorted({0.0, 0.2, 0.4, 0.6, 0.8, 1.0} - {round(rho0, 1)} | {rho0})
    fig.update_yaxes(
        tickvals=ticks,
        row=1,
        col=1,
        ticktext=[f"rho0 {t:g}" if t == rho0 else f"{t:g}" for t in ticks],
    )
    fig.update_annotations(font_size=13)  # the two titles fit side by side at 700 px
    fig.update_xaxes(title_text=f"+ {n_zero} tokens with A = 0 (no loss, not shown)", row=1, col=1)
    r = batch.ratio
    prob = torch.exp(batch.log_probs)
    high, low, _ = clip_regions(r, a, c_low, c_high)
    # the many negative tokens first, the positive ones on top; clipped ones as open symbols so
    # that every group stays visible where they overlap
    groups = [
        ("A<0 kept", (a < 0) & ~low, "#d62728", "circle-open"),
        ("A<0 clipped", low, "#d62728", "x-thin-open"),
        ("A>0 kept", (a > 0) & ~high, "#2ca02c", "circle"),
        ("A>0 clipped", high, "#2ca02c", "x-thin-open"),
    ]
    for name, sel, color, symbol in groups:
        n = int(sel.sum())
        fig.add_trace(
            go.Scattergl(x=r[sel].tolist(), y=prob[sel].tolist(), mode="markers",
                         name=f"{name} ({n})",
                         marker=dict(color=color, size=7, symbol=symbol, opacity=0.8,
                                     line=dict(width=1.5, color=color))),
            1, 2,
        )  # fmt: skip
    for x in (c_low, c_high):
        fig.add_vline(x=x, line_dash="dot", row=1, col=2)
    fig.update_xaxes(title_text="r = pi / pi_rollout (log scale)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="pi(y_t)", row=1, col=2)
    fig.update_yaxes(title_text="share of the loss", range=[0, 1], row=1, col=1)
    fig.update_layout(
        height=420, title=f"measure: {contribution}, pi_rollout weight: {rollout_weight}"
    )
    return fig


def balance_widget(batch: TokenBatch, rho0: float = 0.4):
    """Sliders for c_low and c_high, toggles for the measure and the pi_rollout weight, wired to
    :func:`balance_figure`."""
    import ipywidgets as w

    def make(c_low, c_high, contribution, rollout_weight):
        return balance_figure(batch, c_low, c_high, contribution, rollout_weight, rho0)

    return live_figure(make, {
        "c_low": w.FloatSlider(value=0.8, min=0.5, max=1.0, step=0.01, description="c_low"),
        "c_high": w.FloatSlider(value=1.2, min=1.0, max=3.0, step=0.05, description="c_high"),
        "contribution": w.ToggleButtons(options=["gradient", "value"], description="measure"),
        "rollout_weight": w.Checkbox(value=False, description="pi_rollout weight"),
    })  # fmt: skip


def search_widget(batch: TokenBatch, cfg):
    """A slider that steps through Algorithm 1 on this batch until rho >= rho0."""
    import ipywidgets as w

    from bapo.loss import search_path
    from bapo.viz.figures import search_path_figure

    path = search_path(batch.log_probs, batch.old_log_probs, batch.advantages, None, cfg)

    def make(step):
        return search_path_figure(path, cfg, upto=step)

    slider = w.IntSlider(value=path.stop, min=0, max=len(path.rho) - 1, description="step")
    return live_figure(make, {"step": slider})
