"""Tests of smore_gnn.viz: every plot on a small routed tree, counting what was drawn."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from smore_gnn.analysis import CollectedRouting, health_of, routing_stats  # noqa: E402
from smore_gnn.viz import (  # noqa: E402
    draw_routing_tree,
    draw_routing_trees,
    draw_task_trees,
    plot_coroute_matrix,
    plot_entropy_curve,
    plot_expert_usage,
    plot_gamma_vs_layers,
    plot_health_history,
    plot_routing_health,
    plot_task_expert_heatmap,
    tree_layout,
)
from tests.conftest import make_layer  # noqa: E402

TOKENS = 6


@pytest.fixture
def layer():
    """A (4, 3) x fanout (2, 2) adapter after a forward on 6 tokens: 4 + 2 + 1 nodes a tree."""
    layer = make_layer(num_experts=[4, 3], fanout=[2, 2], rank=[2, 2])
    layer(torch.randn(2, 3, 8, dtype=torch.float64))
    return layer


def drawn(ax) -> tuple[int, int]:
    """``(nodes, edges)`` drawn in ``ax``: scatter offsets and line segments."""
    nodes = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    edges = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
    return nodes, edges


def test_tree_layout_is_layered_and_centred(layer):
    pos = tree_layout(layer.last_tree.get_example(0))
    assert sorted(y for _, y in pos.values()) == [0, 0, 0, 0, 1, 1, 2]
    assert [pos[n][0] for n in range(4)] == [0, 1, 2, 3]
    assert pos[4][0] == 0.5 and pos[5][0] == 2.5 and pos[6][0] == 1.5  # parents over children


def test_draw_routing_tree(layer, tmp_path):
    path = tmp_path / "sub" / "tree.png"
    fig = draw_routing_tree(layer.last_tree, token=2, path=path, show_scores=True)
    assert isinstance(fig, Figure) and path.stat().st_size > 0
    (ax,) = fig.axes
    assert drawn(ax) == (7, 6)
    texts = {t.get_text() for t in ax.texts}
    assert "root" in texts
    experts = layer.last_tree.experts
    assert {f"L1:e{e}" for e in experts[1][2].tolist()} <= texts
    assert {f"L0:e{e}" for e in experts[0][2].tolist()} <= texts
    assert ax.get_title() == "token 2"
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len({round(float(w), 6) for w in lines.get_linewidths()}) > 1  # width ~ gate score


def test_draw_routing_tree_accepts_data_and_routing(layer):
    data = layer.last_tree.get_example(1)
    assert drawn(draw_routing_tree(data, title="x").axes[0]) == (7, 6)
    assert drawn(draw_routing_tree(layer.last_routing, token=1).axes[0]) == (7, 6)


def test_draw_routing_trees_tokens_and_list(layer, tmp_path):
    labels = list("abcdef")
    fig = draw_routing_trees(layer, labels=labels, ncols=3, path=tmp_path / "t.png")
    assert len(fig.axes) == TOKENS
    assert [ax.get_title() for ax in fig.axes] == labels
    assert all(drawn(ax) == (7, 6) for ax in fig.axes)
    assert (tmp_path / "t.png").exists()
    fig = draw_routing_trees([layer, layer.last_tree], tokens=[0, 4])
    assert [ax.get_title() for ax in fig.axes] == ["tree 0, token 0", "tree 1, token 4"]
    deeper = make_layer(num_experts=[2, 2, 2], fanout=[1, 1, 2], rank=[1, 1, 1])
    deeper(torch.randn(2, 8, dtype=torch.float64))
    fig = draw_routing_trees([layer, deeper])  # 2 and 3 expert layers: the legend has both
    assert [drawn(ax) for ax in fig.axes] == [(7, 6), (7, 6)]
    assert [t.get_text() for t in fig.legends[0].get_texts()][-2:] == ["layer 2", "root"]
    with pytest.raises(ValueError, match="one token per tree"):
        draw_routing_trees([layer, layer], tokens=[0])
    with pytest.raises(ValueError, match="labels"):
        draw_routing_trees(layer, tokens=[0, 1], labels=["a"])


def test_plot_expert_usage(layer, tmp_path):
    fig = plot_expert_usage(layer, path=tmp_path / "u.png", token_labels=list("abcdef"))
    assert (tmp_path / "u.png").exists()
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.images[0].get_array().shape for ax in heatmaps] == [(TOKENS, 4), (TOKENS, 3)]
    assert int(heatmaps[0].images[0].get_array().sum()) == TOKENS * 4
    fig = plot_expert_usage(layer.last_tree, layer=1, kind="bar", num_experts=[4, 3])
    (ax,) = fig.axes
    assert sum(p.get_height() for p in ax.patches) == TOKENS * 2
    assert len(ax.patches) == 3
    with pytest.raises(ValueError, match="kind"):
        plot_expert_usage(layer, kind="pie")


def test_plot_coroute_matrix(layer, tmp_path):
    fig = plot_coroute_matrix(layer, 0, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").exists()
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (3, 4) and int(image.sum()) == TOKENS * 4
    assert sum(int(t.get_text()) for t in fig.axes[0].texts) == TOKENS * 4
    top = plot_coroute_matrix(layer, 1).axes[0]
    assert top.images[0].get_array().shape == (1, 3)
    assert "root" in top.get_title()


def test_plot_entropy_curve(layer, tmp_path):
    history = [{"step": 10 * i, **routing_stats(layer, [4, 3])} for i in range(5)]
    history.insert(2, {"step": 15, "loss": 1.0})  # a log line without routing stats
    fig = plot_entropy_curve(history, keys=("entropy", "load_share"), path=tmp_path / "e.png")
    assert (tmp_path / "e.png").exists()
    entropy, share = fig.axes[:2]
    assert len(entropy.lines) == 2 and len(share.lines) == 4 + 3
    assert list(entropy.lines[0].get_xdata()) == [0, 10, 20, 30, 40]
    fig = plot_entropy_curve({"entropy": [0.1, 0.5, 0.9]})
    assert list(fig.axes[0].lines[0].get_ydata()) == [0.1, 0.5, 0.9]
    with pytest.raises(ValueError, match="'aux'"):
        plot_entropy_curve(history, keys=("aux",))


def test_plot_gamma_vs_layers(tmp_path):
    fig = plot_gamma_vs_layers(4, 2, max_layers=3, show_star=True, path=tmp_path / "g.png")
    assert (tmp_path / "g.png").exists()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert list(ax.lines[0].get_ydata()) == [6, 216, 279936]
    assert list(ax.lines[1].get_ydata()) == [6, 66, 726]
    assert len(ax.lines) == 3
    measured = {"smore": {1: 6, 2: 216}, "momor": {1: 6, 2: 66}}
    ax = plot_gamma_vs_layers(4, 2, max_layers=3, measured=measured).axes[0]
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert [list(line.get_ydata()) for line in crosses] == [[6, 216], [6, 66]]


MODULES = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]


def collected_of(layer, tasks=("a", "b", "a")) -> CollectedRouting:
    """The fixture's 6 tokens as 3 sequences of 2 tokens, the same routing in two modules."""
    return CollectedRouting(
        trees={name: layer.last_tree for name in MODULES},
        num_experts={name: [4, 3] for name in MODULES},
        sequence=torch.arange(TOKENS) // 2,
        sequence_tasks=None if tasks is None else list(tasks),
    )


def test_plot_task_expert_heatmap(layer, tmp_path):
    health = health_of(collected_of(layer))
    fig = plot_task_expert_heatmap(health, path=tmp_path / "h.png")
    assert (tmp_path / "h.png").exists()
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 4 and len(fig.axes) == 5  # 2 modules x 2 layers + a colour bar
    for ax, (m, l) in zip(heatmaps, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        shares = ax.images[0].get_array()
        assert shares.shape == (2, [4, 3][l])
        assert shares.sum(1).tolist() == pytest.approx([1.0, 1.0])  # each task's picks
        assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
        assert ax.get_title().startswith(f"{m}.up_proj, layer {l}: NMI")
    fig = plot_task_expert_heatmap(health, modules=MODULES[:1], layers=[0], normalize=False)
    (ax,) = [ax for ax in fig.axes if ax.images]
    assert int(ax.images[0].get_array().sum()) == TOKENS * 4  # every leaf pick counted
    with pytest.raises(ValueError, match="max_panels=2"):
        plot_task_expert_heatmap(health, max_panels=2)
    with pytest.raises(ValueError, match="not in the health"):
        plot_task_expert_heatmap(health, modules=["nope"])
    with pytest.raises(ValueError, match="no task data"):
        plot_task_expert_heatmap(health_of(collected_of(layer, tasks=None)))


def test_plot_routing_health(layer, tmp_path):
    health = health_of(collected_of(layer))
    fig = plot_routing_health(health, path=tmp_path / "r.png")
    assert (tmp_path / "r.png").exists()
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == [
        "median score spread",
        "busiest-expert share",
        "load entropy / log s",
        "task NMI (whole tree)",
    ]
    spread, share, entropy, nmi = fig.axes
    top = health["modules"][MODULES[0]]["layers"][1]["top_share"]
    (line,) = [line for line in share.lines if line.get_label() == "layer 1"]
    assert list(line.get_ydata()) == [top, top]  # one point per module
    assert len(share.lines) == 4  # two layers, each with its uniform level
    assert [line.get_label() for line in nmi.lines] == ["tasks", "shuffled tasks"]
    assert "task NMI" in fig.get_suptitle()
    bare = plot_routing_health(health_of(collected_of(layer, tasks=None)))
    assert len(bare.axes) == 3
    with pytest.raises(TypeError, match="routing_health"):
        plot_routing_health({"summary": {}})


def test_draw_task_trees(layer, tmp_path):
    tasks = ["a", "a", "b", "b", "a", "a"]
    fig = draw_task_trees(
        layer.last_tree, tasks, token_labels=list("uvwxyz"), path=tmp_path / "t.png"
    )
    assert (tmp_path / "t.png").exists()
    assert len(fig.axes) == 2 and all(drawn(ax) == (7, 6) for ax in fig.axes)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("a\ntoken 0 'u'") and titles[1].startswith("b\ntoken 2 'w'")
    fig = draw_task_trees(layer.last_tree, tasks, per_task=2)
    assert 3 <= len(fig.axes) <= 4  # b has two tokens, a at most two structures shown
    with pytest.raises(ValueError, match="token_labels"):
        draw_task_trees(layer.last_tree, tasks, token_labels=["x"])
    with pytest.raises(ValueError, match="token_tasks"):
        draw_task_trees(layer.last_tree, ["a"])


def test_plot_health_history(layer, tmp_path):
    summary = health_of(collected_of(layer))["summary"]
    history = [{"step": s, **summary} for s in (0, 5, 10)]
    fig = plot_health_history(history, path=tmp_path / "hh.png")
    assert (tmp_path / "hh.png").exists() and len(fig.axes) == 4
    spread, share, _, nmi = fig.axes
    assert list(spread.lines[0].get_xdata()) == [0, 5, 10]
    assert [line.get_label() for line in share.lines] == ["max_top_share", "median_top_share"]
    assert [line.get_label() for line in nmi.lines] == ["task_nmi", "task_nmi_shuffled"]
    assert list(nmi.lines[1].get_ydata()) == [summary["task_nmi_shuffled"]] * 3
    bare = health_of(collected_of(layer, tasks=None))["summary"]
    assert len(plot_health_history([{"step": 0, **bare}]).axes) == 3
    with pytest.raises(ValueError, match="empty"):
        plot_health_history([])
