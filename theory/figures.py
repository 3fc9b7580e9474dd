"""Figure 2 of the paper: structural flexibility against depth (``s = 4``, ``f = 2``).

Drawn with the object-oriented Matplotlib API on an Agg canvas, so importing this module never
changes the global backend.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from theory.closed_form import gamma_momor_bound, gamma_smore, gamma_smore_star, uniform


def figure2(
    num_experts: int = 4,
    fanout: int = 2,
    max_layers: int = 4,
    measured: Mapping[str, Mapping[int, int]] | None = None,
) -> Figure:
    """Gamma against the number of layers ``L`` on a log scale, both models of the paper.

    Args:
        num_experts: ``s`` in every layer.
        fanout: ``f`` in every layer.
        max_layers: largest ``L`` drawn.
        measured: optional brute-force counts ``{"smore" | "momor" | "smore_star": {L: count}}``
            drawn as markers over the closed-form curves.

    Returns:
        The figure (Agg canvas attached; save it with ``fig.savefig(path)``).
    """
    layers = list(range(1, max_layers + 1))
    curves = {
        "smore": ("S'MoRE (Thm 3.4)", gamma_smore, "-", "C0"),
        "momor": ("MoMOR bound (Thm 3.3)", gamma_momor_bound, "-", "C1"),
        "smore_star": ("S'MoRE* (our closed form)", gamma_smore_star, "--", "C2"),
    }
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, (label, gamma, style, color) in curves.items():
        values = [gamma(*uniform(num_experts, fanout, L)) for L in layers]
        ax.plot(layers, values, style, color=color, marker="o", label=label)
        for L, v in zip(layers, values):
            if key != "smore_star":
                ax.annotate(f"{v:,}", (L, v), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color=color)  # fmt: skip
        counts = (measured or {}).get(key, {})
        if counts:
            ax.plot(list(counts), list(counts.values()), "x", color="k", markersize=9,
                    label="brute force (GNN)" if key == "smore" else None)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xlim(0.7, max_layers + 0.7)  # room for the labels of the last points
    ax.set_xlabel("number of expert layers L")
    ax.set_ylabel(r"structural flexibility $\Gamma$")
    ax.set_title(f"Figure 2: s = {num_experts}, f = {fanout} per layer")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
