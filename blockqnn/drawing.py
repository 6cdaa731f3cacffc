"""Block drawings like the paper's figure of found blocks: the DAG in layers by depth, input on top, output below.

Hand-written layout (no graphviz binary to install): each node sits in the row of its longest path from the
input; within a row, nodes are ordered by the mean position of their predecessors (one barycentre sweep), which
keeps the few edges of a block mostly uncrossed. Edges that skip rows run straight down through narrow slots of
the rows between, so they never cross a box.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path as MplPath
from matplotlib.text import Text

from blockqnn.codes import Block, Layer, LayerType

NAMES = {
    LayerType.CONV: "conv",
    LayerType.MAX_POOL: "max pool",
    LayerType.AVG_POOL: "avg pool",
    LayerType.IDENTITY: "identity",
    LayerType.ADD: "add",
    LayerType.CONCAT: "concat",
}
# Light enough for black text, and far apart in CIELAB (every two at least 20 apart: tests/test_report.py).
COLOURS = {
    LayerType.CONV: "#9ecae1",
    LayerType.MAX_POOL: "#fdae6b",
    LayerType.AVG_POOL: "#f4a6c8",
    LayerType.IDENTITY: "#e0e0e0",
    LayerType.ADD: "#a1d99b",
    LayerType.CONCAT: "#bcaee0",
}
ENDS = "#fff7bc"  # input and output nodes
BOX_W, BOX_H, ROW_GAP, BEND_W, SWEEPS = 0.9, 0.42, 0.85, 0.4, 3
PARALLEL_GAP, LABEL_PAD = 0.14, 0.06  # between edges joining the same two nodes; around a label in its box


def label(layer: Layer) -> str:
    """``conv 3x3``, ``max pool 1x1``, ``add``: type and kernel, as in the paper's figure."""
    name = NAMES[LayerType(layer.type)]
    return f"{name} {layer.kernel}x{layer.kernel}" if layer.kernel else name


def depths(block: Block) -> dict[int, int]:
    """Longest-path depth of every node from the input (0); indices are topological, so one pass suffices."""
    depth = {0: 0}
    for src, dst in sorted(block.edges(), key=lambda e: e[1]):
        depth[dst] = max(depth.get(dst, 0), depth[src] + 1)
    return depth


Node = int | tuple[int, int, int]  # a block node, or a bend point (src, dst, row) of an edge that skips rows


def layout(block: Block) -> tuple[dict[Node, tuple[float, float]], list[list[Node]]]:
    """Positions of nodes and bend points, and each edge as the list of points it runs through.

    An edge that skips rows gets one bend point per row it crosses (Sugiyama's dummy nodes), which take a
    narrow slot in that row, so long edges run between the boxes instead of through them.
    """
    depth = depths(block)
    routes = []
    for src, dst in block.edges():
        routes.append([src, *((src, dst, r) for r in range(depth[src] + 1, depth[dst])), dst])
    row_of = {**depth, **{p: p[2] for route in routes for p in route[1:-1]}}
    preds: dict[Node, list[Node]] = {}
    succs: dict[Node, list[Node]] = {}
    for route in routes:
        for a, b in zip(route, route[1:]):
            preds.setdefault(b, []).append(a)
            succs.setdefault(a, []).append(b)
    rows = [sorted((n for n in row_of if row_of[n] == r), key=lambda n: (isinstance(n, tuple), n))
            for r in range(max(depth.values()) + 1)]
    pos = _place(rows)
    down = [(r, preds) for r in range(1, len(rows))]
    up = [(r, succs) for r in range(len(rows) - 2, -1, -1)]
    for _ in range(SWEEPS):  # barycentre sweeps: down by predecessors, then up by successors
        for r, near in down + up:
            rows[r].sort(key=lambda n, near=near: _mean_x(pos, near.get(n, []), pos[n][0]))
            pos = _place(rows)
    return pos, routes


def _mean_x(pos: dict[Node, tuple[float, float]], nodes: list[Node], default: float) -> float:
    return sum(pos[n][0] for n in nodes) / len(nodes) if nodes else default


def _place(rows: list[list[Node]]) -> dict[Node, tuple[float, float]]:
    """Centre each row; boxes take a unit slot, bend points a narrow one."""
    pos = {}
    for r, nodes in enumerate(rows):
        widths = [BEND_W if isinstance(n, tuple) else 1.0 for n in nodes]
        x = -sum(widths) / 2
        for n, w in zip(nodes, widths):
            pos[n] = (x + w / 2, -r * ROW_GAP)
            x += w
    return pos


def polyline(route: list[Node], pos: dict[Node, tuple[float, float]]) -> list[tuple[float, float]]:
    """The points an edge is drawn through: from the bottom of its source box to the top of its target box,
    running straight down across each row it skips (diagonals only in the gaps between rows, never over a box)."""
    (x0, y0), (x1, y1) = pos[route[0]], pos[route[-1]]
    points = [(x0, y0 - BOX_H / 2)]
    for bend in route[1:-1]:
        x, y = pos[bend]
        points += [(x, y + BOX_H / 2), (x, y - BOX_H / 2)]
    return [*points, (x1, y1 + BOX_H / 2)]


def _node_text(block: Block, node: int) -> tuple[str, str]:
    if node == 0:
        return "input", ENDS
    if node == block.layers[-1].index:
        return ("output\n(concat)" if len(block.outputs()) > 1 else "output"), ENDS
    layer = block.layers[node - 1]
    return label(layer), COLOURS[LayerType(layer.type)]


def wrap_code(code: str, per_line: int = 5) -> str:
    """An NSC code on several lines, broken between tuples (titles of drawings, table cells)."""
    tuples = code.strip("[]").replace("),(", ")\0(").split("\0")
    return "\n".join(",".join(tuples[i : i + per_line]) for i in range(0, len(tuples), per_line))


def edge_lines(routes: list[list[Node]], pos: dict[Node, tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Each edge's polyline; edges between the same two nodes (``add(x, x)``, ``concat(x, x)``) side by side, so
    that each is seen."""
    total = Counter((route[0], route[-1]) for route in routes)
    seen: Counter = Counter()
    lines = []
    for route in routes:
        pair = (route[0], route[-1])
        shift = (seen[pair] - (total[pair] - 1) / 2) * PARALLEL_GAP
        seen[pair] += 1
        lines.append([(x + shift, y) for x, y in polyline(route, pos)])
    return lines


def figure(rows: int = 1, cols: int = 1, **subplots: Any) -> tuple[Figure, Any]:
    """A figure and its axes, as ``plt.subplots`` gives them, drawn by a canvas of its own (Agg) outside pyplot: the
    report neither sets the backend nor adds to the figures of a notebook or script that uses it."""
    fig = Figure(figsize=subplots.pop("figsize", None))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **subplots)


def block_figure(block: Block, title: str | None = None) -> tuple[Figure, list[tuple[FancyBboxPatch, Text]]]:
    """The drawing of ``block`` and its boxes with their labels (a label too long for its box at the drawing's
    scale is set smaller)."""
    pos, routes = layout(block)
    xs = [x for x, _ in pos.values()]
    left, right = min(xs) - 0.5, max(xs) + 0.5
    bottom = min(y for _, y in pos.values()) - BOX_H
    fig, ax = figure(figsize=(max(3.4, 1.5 * (right - left) + 1.4), 1.6 * -bottom / ROW_GAP * 0.5 + 1.2))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, BOX_H)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.apply_aspect()  # the data scale as drawn, for measuring labels
    boxes = []
    for node, (x, y) in pos.items():
        if isinstance(node, tuple):
            continue
        text, colour = _node_text(block, node)
        label_artist = ax.text(x, y, text, ha="center", va="center", fontsize=8, zorder=3)
        while _width(fig, ax, label_artist) + 2 * LABEL_PAD > BOX_W and label_artist.get_fontsize() > 5:
            label_artist.set_fontsize(label_artist.get_fontsize() - 0.5)  # a long label in a small drawing
        box = FancyBboxPatch(
            (x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H, boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=colour, edgecolor="#333333", linewidth=1.0, zorder=2,
        )
        ax.add_patch(box)
        boxes.append((box, label_artist))
        if 0 < node < block.layers[-1].index:
            ax.text(x + BOX_W / 2 - 0.03, y + BOX_H / 2 - 0.03, str(node), ha="right", va="top", fontsize=6,
                    color="#555555", zorder=3)
    for line in edge_lines(routes, pos):
        ax.add_patch(FancyArrowPatch(path=MplPath(line), arrowstyle="-|>", mutation_scale=10,
                                     linewidth=1.0, color="#444444", zorder=1))
    used = sorted({LayerType(layer.type) for layer in block.body}, key=int)
    ax.legend(handles=[Patch(facecolor=COLOURS[t], edgecolor="#333333", label=NAMES[t]) for t in used],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=7.5, loc="left")
    return fig, boxes


def _width(fig: Figure, ax: Axes, text: Text) -> float:
    """A text's width in data units, as drawn."""
    extent = text.get_window_extent(fig.canvas.get_renderer())
    (x0, _), (x1, _) = ax.transData.inverted().transform([(extent.x0, 0), (extent.x1, 0)])
    return x1 - x0


def draw_block(block: Block, path: str | Path, title: str | None = None) -> Path:
    """Write a PNG of ``block`` to ``path`` and return the path."""
    fig, _ = block_figure(block, title)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return Path(path)
