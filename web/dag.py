"""A workflow's DAG as inline SVG: a pure layered (Sugiyama-style) layout, no IO, no browser.

Steps: longest-path layering (a task sits one layer below its deepest parent), dummy nodes on
edges that span several layers (so long edges take part in ordering and bend around nodes instead
of through them), barycenter ordering swept down and up a few times keeping the order with the
fewest crossings, then coordinates: layers are rows top to bottom (a tall drawing scrolls well on a
phone), each row centred. Node state is only a CSS class (`node s-<status>`), so colours live in
app.css and follow dark mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from markupsafe import escape

NODE_H = 30
LAYER_GAP = 44
NODE_GAP = 16
PAD = 8
CHAR_W = 7.2  # an average glyph width at 12px; a label's box is sized from it, capped at MAX_W
MIN_W, MAX_W = 64.0, 190.0
SWEEPS = 6


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    layer: int
    x: float  # top-left corner
    y: float
    w: float
    h: float


@dataclass(frozen=True, slots=True)
class Edge:
    src: str
    dst: str
    points: tuple[tuple[float, float], ...]  # from the parent's bottom centre through bends to the child's top

    @property
    def path(self) -> str:
        """SVG path data: one cubic curve per segment, vertical at both ends so edges leave and enter cleanly."""
        (x0, y0), *rest = self.points
        out = [f"M{x0:.1f},{y0:.1f}"]
        for x1, y1 in rest:
            mid = (y0 + y1) / 2
            out.append(f"C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}")
            x0, y0 = x1, y1
        return " ".join(out)


@dataclass(frozen=True, slots=True)
class Layout:
    nodes: dict[str, Node]
    edges: tuple[Edge, ...]
    order: tuple[tuple[str, ...], ...]  # real and dummy nodes per layer, left to right
    width: float
    height: float


def _clean(deps: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Parents that name real tasks, each once: a definition is validated, but a drawing must never fail."""
    return {n: list(dict.fromkeys(p for p in parents if p in deps and p != n)) for n, parents in deps.items()}


def layers(deps: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Longest-path layering: roots are layer 0, every other task one below its deepest parent."""
    parents = _clean(deps)
    layer: dict[str, int] = {}
    visiting: set[str] = set()

    def depth(n: str) -> int:
        if n in layer:
            return layer[n]
        visiting.add(n)
        # An edge back into the current path (a cycle, which validation forbids) is ignored, not followed forever.
        d = max((depth(p) + 1 for p in parents[n] if p not in visiting), default=0)
        visiting.discard(n)
        layer[n] = d
        return d

    for n in parents:
        depth(n)
    return layer


def _dummy(src: str, dst: str, i: int) -> str:
    return f"\0{src}\0{dst}\0{i}"  # NUL never occurs in a task name, so dummies cannot collide with tasks


def crossings(order: Sequence[Sequence[str]], links: Sequence[tuple[str, str]]) -> int:
    """Edge crossings between adjacent layers of `order`, for links between nodes of adjacent layers."""
    pos = {n: (li, i) for li, row in enumerate(order) for i, n in enumerate(row)}
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for a, b in links:
        (la, ia), (lb, ib) = pos[a], pos[b]
        if lb == la + 1:
            by_layer.setdefault(la, []).append((ia, ib))
    total = 0
    for pairs in by_layer.values():
        for k, (a1, b1) in enumerate(pairs):
            for a2, b2 in pairs[k + 1 :]:
                if (a1 - a2) * (b1 - b2) < 0:
                    total += 1
    return total


def _order(rows: list[list[str]], links: list[tuple[str, str]]) -> list[list[str]]:
    """Barycenter heuristic: sort each layer by the mean position of its neighbours in the layer just
    swept, alternating downward and upward sweeps, and keep the best order seen (sweeps can oscillate)."""
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for a, b in links:
        down.setdefault(a, []).append(b)
        up.setdefault(b, []).append(a)
    best = [list(r) for r in rows]
    best_c = crossings(best, links)
    cur = [list(r) for r in rows]
    for sweep in range(SWEEPS):
        if best_c == 0:
            break
        downward = sweep % 2 == 0
        indices = range(1, len(cur)) if downward else range(len(cur) - 2, -1, -1)
        for li in indices:
            ref = cur[li - 1] if downward else cur[li + 1]
            cur[li] = _by_barycenter(cur[li], ref, up if downward else down)
        c = crossings(cur, links)
        if c < best_c:
            best, best_c = [list(r) for r in cur], c
    return best


def _by_barycenter(row: list[str], ref: list[str], nbrs: dict[str, list[str]]) -> list[str]:
    where = {n: i for i, n in enumerate(ref)}
    old = {n: i for i, n in enumerate(row)}

    def key(n: str) -> tuple[float, int]:
        ps = [where[p] for p in nbrs.get(n, ()) if p in where]
        # A node without neighbours there keeps its place; ties keep the old order.
        return (sum(ps) / len(ps) if ps else float(old[n]), old[n])

    return sorted(row, key=key)


def _width(name: str) -> float:
    return max(MIN_W, min(MAX_W, len(name) * CHAR_W + 20))


def label(name: str, w: float) -> str:
    """The name as it fits in a box `w` wide, cut with an ellipsis (the full name is in the node's <title>)."""
    fits = int((w - 16) / CHAR_W)
    return name if len(name) <= fits else name[: max(1, fits - 1)] + "…"


def layout(deps: Mapping[str, Sequence[str]]) -> Layout:
    """Place every task of `deps` ({task: its parents}, in declaration order) and route every edge."""
    parents = _clean(deps)
    layer = layers(parents)
    nlayers = max(layer.values(), default=-1) + 1
    rows: list[list[str]] = [[] for _ in range(nlayers)]
    for n in parents:  # declaration order is the starting order: what the author wrote usually reads well
        rows[layer[n]].append(n)
    links: list[tuple[str, str]] = []
    chains: dict[tuple[str, str], list[str]] = {}
    for child, ps in parents.items():
        for p in ps:
            chain = [p]
            for i, li in enumerate(range(layer[p] + 1, layer[child])):
                d = _dummy(p, child, i)
                rows[li].append(d)
                chain.append(d)
            chain.append(child)
            links.extend(pairwise(chain))
            chains[(p, child)] = chain
    order = _order(rows, links)

    widths = {n: (_width(n) if n in parents else 0.0) for row in order for n in row}
    row_w = [sum(widths[n] for n in row) + NODE_GAP * max(0, len(row) - 1) for row in order]
    width = max(row_w, default=0.0) + 2 * PAD
    xs: dict[str, float] = {}  # centre x of every node, dummies included
    for row, rw in zip(order, row_w, strict=True):
        x = (width - rw) / 2
        for n in row:
            xs[n] = x + widths[n] / 2
            x += widths[n] + NODE_GAP
    ys = {n: PAD + layer_i * (NODE_H + LAYER_GAP) for layer_i, row in enumerate(order) for n in row}
    nodes = {n: Node(n, layer[n], xs[n] - widths[n] / 2, ys[n], widths[n], NODE_H) for n in parents}
    edges = []
    for (p, child), chain in chains.items():
        pts: list[tuple[float, float]] = [(xs[p], ys[p] + NODE_H)]
        pts += [(xs[d], ys[d] + NODE_H / 2) for d in chain[1:-1]]
        pts.append((xs[child], ys[child]))
        edges.append(Edge(p, child, tuple(pts)))
    height = nlayers * NODE_H + max(0, nlayers - 1) * LAYER_GAP + 2 * PAD if nlayers else 2 * PAD
    return Layout(nodes, tuple(edges), tuple(tuple(r) for r in order), width, float(height))


def node_id(name: str) -> str:
    """The DOM id of a task's node (task names are letters, digits, _, - and :, all valid in an id)."""
    return f"node-{name}"


def svg(lay: Layout, status: Mapping[str, str] | None = None, *, href: str | None = None) -> str:
    """The layout as an inline <svg class="dag">; each node is `<g class="node s-<status>">` (status from
    `status`, else `waiting`), linking to `href` with `{task}` replaced when given."""
    status = status or {}
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" '
        f'width="{lay.width:.0f}" height="{lay.height:.0f}" role="img" aria-label="workflow graph">',
        '<defs><marker id="dag-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" class="arrow"/></marker></defs>',
    ]
    for e in lay.edges:
        parts.append(
            f'<path class="edge" data-from="{escape(e.src)}" data-to="{escape(e.dst)}" d="{e.path}" '
            'marker-end="url(#dag-arrow)"/>'
        )
    for n in lay.nodes.values():
        st = status.get(n.name, "waiting")
        body = (
            f"<title>{escape(n.name)}: {escape(st)}</title>"
            f'<rect x="{n.x:.1f}" y="{n.y:.1f}" width="{n.w:.1f}" height="{n.h:.1f}" rx="6"/>'
            f'<text x="{n.x + n.w / 2:.1f}" y="{n.y + n.h / 2:.1f}" text-anchor="middle" dominant-baseline="central">'
            f"{escape(label(n.name, n.w))}</text>"
        )
        if href is not None:
            body = f'<a href="{escape(href.replace("{task}", n.name))}">{body}</a>'
        parts.append(
            f'<g class="node s-{escape(st)}" id="{escape(node_id(n.name))}" data-task="{escape(n.name)}" '
            f'data-status="{escape(st)}">{body}</g>'
        )
    parts.append("</svg>")
    return "".join(parts)
