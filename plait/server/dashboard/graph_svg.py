"""A program's graph as SVG: nodes left to right by depth (longest chain of predecessors), coloured by state.

Each node is a ``<g class='node' data-node=ID data-state=STATE>`` (pages and tests read states from it), with its
kind, state and detail as a hover title. Without edges (a program rebuilt from a timeline) nodes are laid out in
order of first appearance, in rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from plait.server.dashboard.program_snapshot import NodeSnapshot
from plait.server.dashboard.svg import STATE_COLORS, esc, legend, svg_open

NODE_W, NODE_H = 132, 26
GAP_X, GAP_Y = 38, 10
PAD = 10
LEGEND_H = 22
COLUMNS_WITHOUT_EDGES = 6  # nodes per row when the edges are not known
_LABEL_CHARS = 19


def depths(node_ids: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Node -> 0 for nodes without predecessors, else 1 + the deepest predecessor. Nodes on a cycle (never in a
    valid workflow) get depth 0 rather than an error."""
    known = set(node_ids)
    predecessors: dict[str, list[str]] = {n: [] for n in node_ids}
    successors: dict[str, list[str]] = {n: [] for n in node_ids}
    for a, b in edges:
        if a in known and b in known:
            predecessors[b].append(a)
            successors[a].append(b)
    remaining = {n: len(predecessors[n]) for n in node_ids}
    ready = [n for n in node_ids if remaining[n] == 0]
    depth = dict.fromkeys(node_ids, 0)
    while ready:
        node = ready.pop()
        for child in successors[node]:
            depth[child] = max(depth[child], depth[node] + 1)
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    return depth


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def graph_svg(
    nodes: Sequence[NodeSnapshot],
    edges: Sequence[tuple[str, str]],
    *,
    edges_known: bool = True,
    omitted: int = 0,
) -> str:
    """The graph picture; ``omitted`` counts nodes left out (said below the picture)."""
    ids = [node.node_id for node in nodes]
    if edges_known:
        column = depths(ids, edges)
    else:
        column = {node_id: index % COLUMNS_WITHOUT_EDGES for index, node_id in enumerate(ids)}
    rows: dict[int, int] = {}
    position: dict[str, tuple[float, float]] = {}
    for node_id in ids:
        col = column[node_id]
        row = rows.get(col, 0)
        rows[col] = row + 1
        position[node_id] = (PAD + col * (NODE_W + GAP_X), PAD + LEGEND_H + row * (NODE_H + GAP_Y))
    columns = max(rows, default=0) + 1
    height_rows = max(rows.values(), default=1)
    key, key_w = legend(STATE_COLORS.items(), PAD, PAD + 10)
    width = max(2 * PAD + columns * NODE_W + (columns - 1) * GAP_X, 2 * PAD + key_w)
    height = 2 * PAD + LEGEND_H + height_rows * (NODE_H + GAP_Y) + (16 if omitted or not edges_known else 0)
    out = [svg_open(width, height, "program graph", "class='graph'"), key]
    out.append("<g stroke='#5f6368' stroke-width='1' fill='none'>")
    for a, b in edges if edges_known else ():
        if a not in position or b not in position:
            continue
        (ax, ay), (bx, by) = position[a], position[b]
        x1, y1, x2, y2 = ax + NODE_W, ay + NODE_H / 2, bx, by + NODE_H / 2
        mid = (x1 + x2) / 2
        out.append(f"<path d='M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2 - 4:.1f},{y2:.1f}'/>")
        out.append(f"<path d='M{x2 - 4:.1f},{y2 - 3:.1f} L{x2:.1f},{y2:.1f} L{x2 - 4:.1f},{y2 + 3:.1f}'/>")
    out.append("</g>")
    for node in nodes:
        x, y = position[node.node_id]
        fill = STATE_COLORS.get(node.state, "#ffffff")
        title = f"{node.node_id} ({node.kind}): {node.state}" + (f"; {node.detail}" if node.detail else "")
        stroke = "stroke-dasharray='4 2'" if node.kind == "tool" else ""
        out.append(
            f"<g class='node' data-node='{esc(node.node_id)}' data-state='{esc(node.state)}'>"
            f"<title>{esc(title)}</title>"
            f"<rect x='{x:.1f}' y='{y:.1f}' width='{NODE_W}' height='{NODE_H}' rx='5' fill='{fill}' "
            f"stroke='#5f6368' {stroke}/>"
            f"<text x='{x + 6:.1f}' y='{y + 17:.1f}'>{esc(_label(node.node_id))}</text>"
            f"<text x='{x + NODE_W - 6:.1f}' y='{y + 17:.1f}' text-anchor='end' fill='#5f6368'>"
            f"{'tool' if node.kind == 'tool' else 'llm'}</text></g>"
        )
    notes = []
    if not edges_known:
        notes.append("data flow not recorded: nodes in order of first activity")
    if omitted:
        notes.append(f"{omitted} more nodes not drawn")
    if notes:
        out.append(f"<text x='{PAD}' y='{height - 6:.1f}' fill='#5f6368'>{esc('; '.join(notes))}</text>")
    out.append("</svg>")
    return "".join(out)
