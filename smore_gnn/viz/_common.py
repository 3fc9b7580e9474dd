"""Shared plotting helpers: figure creation, per-layer colours, saving."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

ROOT_COLOR = "#9e9e9e"


def layer_color(layer: int, num_layers: int) -> str:
    """One colour per expert layer (``tab10``); the root (``layer == num_layers``) is grey."""
    if layer >= num_layers:
        return ROOT_COLOR
    from matplotlib import colormaps

    return to_hex(colormaps["tab10"](layer % 10))


def layer_handles(num_layers: int) -> list[Line2D]:
    """Legend proxies: one marker per expert layer plus the root."""
    labels = [f"layer {l}" for l in range(num_layers)] + ["root"]
    return [
        Line2D([], [], marker="o", ls="", markersize=9, color=layer_color(l, num_layers), label=t)
        for l, t in enumerate(labels)
    ]


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax``'s figure and ``ax``, or a fresh pyplot-free :class:`Figure` with one axes."""
    if ax is not None:
        return ax.get_figure(), ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def grid(n: int, ncols: int | None, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels of size ``panel`` in ``ncols`` columns (default: one row)."""
    if n < 1:
        raise ValueError(f"Expected at least one panel (got {n})")
    ncols = min(n, ncols or n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def save(fig: Figure, path: str | Path | None, dpi: int = 120) -> Figure:
    """Save ``fig`` to ``path`` (parents created) when a path is given; return ``fig``."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
