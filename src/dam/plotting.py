"""Figures without pyplot: safe to call from a notebook, a server or a test.

``matplotlib.pyplot`` keeps global state: a current figure, a registry of open figures, and one backend for
the whole process, which ``matplotlib.use("Agg")`` would switch under a Jupyter notebook.  The figures here
are plain :class:`matplotlib.figure.Figure` objects with their own Agg canvas: pyplot is never imported, the
backend is never read or changed, and a figure is freed like any other object once it is dropped.

    fig = new_figure((6, 4))
    ax = fig.subplots()
    ax.plot(...)
    save_figure(fig, "out/figure.png")
"""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from dam.io import atomic_write_bytes

DPI = 110


def new_figure(figsize: tuple[float, float] = (6.4, 4.8), **kwargs: object) -> Figure:
    """A figure of ``figsize`` inches with an Agg canvas of its own; add axes with ``fig.subplots(...)``.

    Keyword arguments go to :class:`~matplotlib.figure.Figure` (``layout="constrained"``, ``facecolor``, ...).
    """
    fig = Figure(figsize=figsize, **kwargs)  # type: ignore[arg-type]
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: savefig and text layout need no backend
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: float = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a killed process never leaves half a file); returns it.

    The picture is rendered into memory first, so a failure while drawing leaves any old file in place.
    """
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def colormap(name: str) -> Colormap:
    """A registered colormap by name (``"tab20"``, ``"viridis"``, ...), without pyplot's ``get_cmap``."""
    import matplotlib

    return matplotlib.colormaps[name]
