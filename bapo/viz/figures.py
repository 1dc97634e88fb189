"""Plotly figures of the loss core (Eq. 8, Algorithm 1)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bapo.loss import BAPOConfig, SearchPath


def search_path_figure(path: SearchPath, cfg: BAPOConfig, upto: int | None = None) -> go.Figure:
    """Algorithm 1 step by step: rho along the path (left) and the bounds it moved (right).

    ``upto`` draws only the first steps (for a step-through slider); the chosen point is marked.
    """
    n = len(path.rho) if upto is None else min(upto + 1, len(path.rho))
    steps = list(range(n))
    rho = path.rho[:n].tolist()
    target = cfg.rho0 if cfg.target == "share" else cfg.rho0 / (1 + cfg.rho0)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("positive share rho (Eq. 8)", "clipping bounds")
    )
    fig.add_trace(go.Scatter(x=steps, y=rho, mode="lines+markers", name="rho"), 1, 1)
    fig.add_hline(y=target, line_dash="dash", annotation_text="rho0", row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=path.c_high[:n].tolist(), name="c_high"), 1, 2)
    fig.add_trace(go.Scatter(x=steps, y=path.c_low[:n].tolist(), name="c_low"), 1, 2)
    if path.stop < n:
        fig.add_trace(
            go.Scatter(x=[path.stop], y=[rho[path.stop]], mode="markers", name="chosen",
                       marker=dict(size=14, symbol="star", color="crimson")),
            1, 1,
        )  # fmt: skip
    fig.update_xaxes(title_text="search step")
    fig.update_layout(height=360, title=f"BAPO search ({cfg.order} order, {cfg.contribution})")
    return fig


def live_figure(make, controls: dict):
    """``make(**values)`` drawn in a ``plotly`` FigureWidget and redrawn in place whenever one of
    ``controls`` (name -> ipywidget) changes; returns ``VBox([controls..., figure])``.

    No ``Output`` widget and no ``display()`` inside a callback: headless runs (nbclient,
    nbmake) stalled for minutes on ``ipywidgets.interactive``'s Output capture.
    """
    import ipywidgets as w

    def values():
        return {k: c.value for k, c in controls.items()}

    fw = go.FigureWidget(make(**values()))

    def redraw(_change=None):
        new = make(**values())
        with fw.batch_update():
            fw.data = ()
            fw.add_traces(list(new.data))
            fw.layout = new.layout

    for c in controls.values():
        c.observe(redraw, names="value")
    box = w.VBox([*controls.values(), fw])
    box.figure, box.redraw = fw, redraw  # for tests and notebooks
    return box
