"""Figures of the off-policy scenarios: which policy version generated each token."""

from __future__ import annotations

import plotly.graph_objects as go

from bapo.train.offpolicy import Sample


def versions_figure(samples: list[Sample], max_rows: int = 24, title: str = "") -> go.Figure:
    """One row per completion, one cell per token, coloured by the policy version that generated
    it: partial rollouts show as rows of several colours, replayed samples as old colours."""
    rows = samples[:max_rows]
    width = max((len(s.versions) for s in rows), default=1)
    z = [s.versions + [None] * (width - len(s.versions)) for s in rows]
    labels = [f"#{i} A={s.advantage:+.2f}" for i, s in enumerate(rows)]
    fig = go.Figure(
        go.Heatmap(z=z, y=labels, colorscale="Viridis", colorbar=dict(title="policy version"),
                   hovertemplate="token %{x}<br>version %{z}<extra></extra>")
    )  # fmt: skip
    fig.update_xaxes(title_text="completion token")
    fig.update_layout(height=max(300, 18 * len(rows) + 120),
                      title=title or "behaviour policy version of each token")  # fmt: skip
    return fig
