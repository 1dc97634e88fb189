"""Plotly figures and ipywidgets for the notebooks.  They read tensors and metric records; they
never reach into the trainer."""

from bapo.viz.figures import search_path_figure

__all__ = ["search_path_figure"]
