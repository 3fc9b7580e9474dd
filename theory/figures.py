"""Figure 2 of the paper: structural flexibility against depth (``s = 4``, ``f = 2``).

The drawing itself lives in :func:`smore_gnn.viz.plot_gamma_vs_layers` (one implementation
for the library, the notebooks and this CLI); this module fixes the theory CLI's choices.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure

from smore_gnn.viz import plot_gamma_vs_layers


def figure2(
    num_experts: int = 4,
    fanout: int = 2,
    max_layers: int = 4,
    measured: Mapping[str, Mapping[int, int]] | None = None,
) -> Figure:
    """Gamma against the number of layers ``L`` on a log scale: S'MoRE, MoMOR and S'MoRE*.

    Args:
        num_experts: ``s`` in every layer.
        fanout: ``f`` in every layer.
        max_layers: largest ``L`` drawn.
        measured: optional brute-force counts ``{"smore" | "momor" | "smore_star": {L: count}}``
            drawn as markers over the closed-form curves.

    Returns:
        The figure; save it with ``fig.savefig(path)``.
    """
    return plot_gamma_vs_layers(
        num_experts,
        fanout,
        max_layers,
        show_star=True,
        measured=measured,
        title=f"Figure 2: s = {num_experts}, f = {fanout} per layer",
    )
