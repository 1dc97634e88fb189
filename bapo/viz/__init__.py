"""Plotly figures and ipywidgets for the notebooks.  They read tensors and metric records; they
never reach into the trainer."""

from bapo.viz.figures import search_path_figure
from bapo.viz.theory import (
    ClipRuleView,
    clip_rule_view,
    make_clip_rule_widget,
    prediction_figure,
    quadrant_figure,
    results_table,
    simulation_figure,
)

__all__ = [
    "ClipRuleView",
    "clip_rule_view",
    "make_clip_rule_widget",
    "prediction_figure",
    "quadrant_figure",
    "results_table",
    "search_path_figure",
    "simulation_figure",
]
