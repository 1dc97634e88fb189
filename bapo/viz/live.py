"""A live training dashboard for notebooks: pass :meth:`LiveDashboard.callback` to a trainer and
the panels grow as steps finish (a plotly ``FigureWidget`` in JupyterLab).  Headless (nbmake, a
script) nothing live is needed: :meth:`LiveDashboard.figure` gives the same panels statically."""

from __future__ import annotations

import math
from collections.abc import Callable

import plotly.graph_objects as go

from bapo.viz.report import REPORT_METRICS, arm_style, compare_figure, hover_template, panel_grid

DASHBOARD_METRICS = REPORT_METRICS


class LiveDashboard:
    """Panels of training metrics that grow as steps finish.

    The panels (titles, axis titles with units, the ``rho0`` line) are drawn before the first
    step; ``steps`` fixes the x axis to the run's length so the lines grow into it.  Hover text
    comes from :mod:`bapo.glossary`.
    """

    def __init__(
        self, metrics=DASHBOARD_METRICS, cols: int = 3, live: bool = True, steps: int | None = None
    ):
        self.metrics = list(metrics)
        self.cols = cols
        self.runs: dict[str, list[dict]] = {}
        self.widget = None
        self._traces: dict[tuple[str, str], int] = {}
        if live:
            try:
                base = panel_grid(self.metrics, cols)
                if steps:
                    base.update_xaxes(range=[0, steps])
                self.widget = go.FigureWidget(base)
            except Exception:  # no widget support here: stay static
                self.widget = None

    def callback(self, run: str) -> Callable[[dict], None]:
        """A trainer callback that files each step's record under ``run``."""

        def on_record(record: dict) -> None:
            self.add(run, record)

        return on_record

    def add(self, run: str, record: dict) -> None:
        self.runs.setdefault(run, []).append(record)
        if self.widget is None:
            return
        if (run, self.metrics[0][0]) not in self._traces:
            color, dash = arm_style(run, len(self.runs) - 1)
            for i, (key, _t) in enumerate(self.metrics):
                self.widget.add_trace(
                    go.Scatter(x=[], y=[], name=run, legendgroup=run, showlegend=i == 0,
                               line=dict(color=color, dash=dash),
                               hovertemplate=hover_template(run, key)),
                    row=i // self.cols + 1, col=i % self.cols + 1,
                )  # fmt: skip
                self._traces[(run, key)] = len(self.widget.data) - 1
        with self.widget.batch_update():
            for key, _t in self.metrics:
                v = record.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    tr = self.widget.data[self._traces[(run, key)]]
                    tr.x = tuple(tr.x or ()) + (record["step"],)
                    tr.y = tuple(tr.y or ()) + (v,)

    def figure(self, title: str = "") -> go.Figure:
        """The same panels as a static figure (runs with the same name prefix are not merged)."""
        return compare_figure(
            {k: [v] for k, v in self.runs.items()}, self.metrics, self.cols, title
        )
