"""A program's timeline as SVG: one lane for the program (its lifetime, pins, evictions, prefetches) and one per node
(queued, prefill, decode, tool), seconds from the program's start on the x axis.

Spans are ``<rect class='span' data-kind=KIND>`` with the kind, node, times and arguments as a hover title; instants
are diamonds. Nodes still running (``ProgramSnapshot.live``) are drawn as hatched spans up to ``now``. The data is
the planner's ``Timeline``, exactly what the Chrome-trace export holds.
"""

from __future__ import annotations

import json

from plait.runtime.timeline import TimelineEvent, TimelineKind
from plait.server.dashboard.program_snapshot import ProgramSnapshot
from plait.server.dashboard.svg import KIND_COLORS, esc, fmt_seconds, legend, nice_ticks, svg_open

WIDTH = 820
LABEL_W = 140
LANE_H = 18
TOP = 30  # legend
AXIS_H = 22
_PROGRAM_LANE = "(program)"
MIN_SPAN_S = 0.01  # the x axis of a program that lasted (almost) no time
_LEGEND_KINDS = ("queued", "prefill", "decode", "tool", "pinned", "evicted", "prefetched", "deduped", "running")


def _title(event: TimelineEvent, origin: float) -> str:
    where = f" {event.node}" if event.node else ""
    if event.end is None:
        when = f"at {event.start - origin:.3f} s"
    else:
        when = f"{event.start - origin:.3f}–{event.end - origin:.3f} s ({fmt_seconds(event.duration)})"
    args = f" {json.dumps(event.args, default=str)}" if event.args else ""
    return f"{event.kind.value}{where}: {when}{args}"


def timeline_svg(snapshot: ProgramSnapshot, now: float) -> str:
    """The timeline picture of ``snapshot`` (a running program's ends at ``now``)."""
    origin = snapshot.created_at
    end = snapshot.end(now)
    span_s = max(end - origin, MIN_SPAN_S)
    lanes = [_PROGRAM_LANE, *(node.node_id for node in snapshot.nodes)]
    for event in snapshot.events:
        if event.node is not None and event.node not in lanes:
            lanes.append(event.node)
    lane_of = {name: index for index, name in enumerate(lanes)}
    plot_w = WIDTH - LABEL_W - 12
    height = TOP + len(lanes) * LANE_H + AXIS_H + (14 if snapshot.omitted_events else 0)

    def x(t: float) -> float:
        return LABEL_W + (min(max(t, origin), end) - origin) / span_s * plot_w

    out = [svg_open(WIDTH, height, f"timeline of {snapshot.program_id}", "class='timeline'")]
    out.append(
        "<defs><pattern id='live' width='6' height='6' patternUnits='userSpaceOnUse' patternTransform='rotate(45)'>"
        f"<rect width='6' height='6' fill='{KIND_COLORS['running']}'/>"
        "<line x1='0' y1='0' x2='0' y2='6' stroke='#ffffff' stroke-width='2'/></pattern></defs>"
    )
    out.append(legend(((kind, KIND_COLORS[kind]) for kind in _LEGEND_KINDS), 6, 14)[0])
    for index, name in enumerate(lanes):
        y = TOP + index * LANE_H
        if index % 2:
            out.append(f"<rect x='0' y='{y}' width='{WIDTH}' height='{LANE_H}' fill='#f8f9fa'/>")
        label = name if len(name) <= 20 else name[:19] + "…"
        out.append(f"<text x='6' y='{y + 13}'><title>{esc(name)}</title>{esc(label)}</text>")
    axis_y = TOP + len(lanes) * LANE_H
    for tick in nice_ticks(0.0, span_s, 8):
        tx = LABEL_W + tick / span_s * plot_w
        out.append(f"<line x1='{tx:.1f}' y1='{TOP}' x2='{tx:.1f}' y2='{axis_y + 4}' stroke='#e8eaed'/>")
        out.append(f"<text x='{tx:.1f}' y='{axis_y + 16}' text-anchor='middle'>{esc(fmt_seconds(tick))}</text>")
    for event in snapshot.events:
        lane = lane_of[event.node if event.node is not None else _PROGRAM_LANE]
        y = TOP + lane * LANE_H
        color = KIND_COLORS.get(event.kind.value, "#5f6368")
        title = f"<title>{esc(_title(event, origin))}</title>"
        if event.end is None:
            cx, cy = x(event.start), y + LANE_H / 2
            out.append(
                f"<path class='instant' data-kind='{event.kind.value}' fill='{color}' stroke='#ffffff' "
                f"d='M{cx:.1f},{cy - 6:.1f} L{cx + 5:.1f},{cy:.1f} L{cx:.1f},{cy + 6:.1f} L{cx - 5:.1f},{cy:.1f} Z'>"
                f"{title}</path>"
            )
            continue
        x0, x1 = x(event.start), x(event.end)
        if event.kind is TimelineKind.PROGRAM:
            top, h = y + LANE_H - 5, 3  # the lifetime: a thin bar under the pins and cache events
        elif event.kind is TimelineKind.PINNED:
            top, h = y + 3, LANE_H - 9
        else:
            top, h = y + 3, LANE_H - 6
        out.append(
            f"<rect class='span' data-kind='{event.kind.value}' x='{x0:.1f}' y='{top:.1f}' "
            f"width='{max(x1 - x0, 1.0):.1f}' height='{h}' fill='{color}'>{title}</rect>"
        )
    for live in snapshot.live:
        lane = lane_of.get(live.node_id)
        if lane is None:
            continue
        y = TOP + lane * LANE_H
        x0, x1 = x(live.start), x(now)
        title = f"{live.node_id}: {live.label} running for {fmt_seconds(max(0.0, now - live.start))}"
        out.append(
            f"<rect class='span' data-kind='running' x='{x0:.1f}' y='{y + 3}' width='{max(x1 - x0, 1.0):.1f}' "
            f"height='{LANE_H - 6}' fill='url(#live)' stroke='{KIND_COLORS['running']}'>"
            f"<title>{esc(title)}</title></rect>"
        )
    if snapshot.omitted_events:
        out.append(
            f"<text x='6' y='{height - 4}' fill='#5f6368'>{snapshot.omitted_events} more events not drawn "
            "(the Chrome trace has them)</text>"
        )
    out.append("</svg>")
    return "".join(out)
