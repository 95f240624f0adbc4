"""Figures for ``adaptrnn plot``: built on ``matplotlib.figure.Figure`` with the Agg canvas (no
pyplot state), saved without tight bounding boxes so an image is exactly ``figsize × DPI`` pixels."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .console import output_path

DPI = 100
Size = tuple[float, float] | None


def new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` (a missing folder is created, with a note: ``console.output_path``)."""
    out = output_path(out)
    fig.savefig(out, dpi=DPI)
    return out
