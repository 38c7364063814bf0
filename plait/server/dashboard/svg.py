"""What every dashboard picture shares: escaping, colours per timeline kind and node state, axis ticks, number labels.

Every string that reaches an SVG passes through ``esc`` (node ids, program names and tool arguments come from
callers), so a picture can be inserted into a page as markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable

# Colours of timeline spans and instants, by ``TimelineKind`` value; ``running`` marks a node still at work (live
# pages only: the planner records a node's spans when it ends).
KIND_COLORS: dict[str, str] = {
    "program": "#dadce0",
    "queued": "#9aa0a6",
    "prefill": "#f29900",
    "decode": "#1a73e8",
    "tool": "#188038",
    "pinned": "#a142f4",
    "evicted": "#d93025",
    "prefetched": "#12b5cb",
    "deduped": "#e37400",
    "running": "#fbbc04",
}

# Fill colours of graph nodes, by ``NodeState`` value (and the server's ``waiting_for_tool``).
STATE_COLORS: dict[str, str] = {
    "pending": "#f1f3f4",
    "running": "#fde293",
    "waiting_for_tool": "#d2e3fc",
    "done": "#ceead6",
    "failed": "#f6aea9",
    "skipped": "#fad2cf",
    "cancelled": "#e9d2fd",
}

FONT = "font-family='system-ui, sans-serif' font-size='11'"


def esc(value: object) -> str:
    """``value`` as text safe inside SVG/HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def svg_open(width: float, height: float, label: str, extra: str = "") -> str:
    """The opening ``<svg>`` tag of a picture ``width`` x ``height`` pixels (``extra``: more attributes, escaped by
    the caller)."""
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width:.0f} {height:.0f}' width='{width:.0f}' "
        f"height='{height:.0f}' role='img' aria-label='{esc(label)}' {FONT} {extra}>"
    )


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low] if math.isfinite(low) else [0.0]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9 and len(ticks) <= count * 3:
        ticks.append(round(value, 12))
        value += step
    return ticks


def fmt_number(value: float) -> str:
    """A short label: ``1.2k``, ``35``, ``0.25``."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    if magnitude >= 1 or value == 0:
        return f"{value:.3g}"
    return f"{value:.2g}"


def fmt_seconds(value: float) -> str:
    """A duration label: ``0 s``, ``850 ms``, ``2.4 s``, ``3 min 05 s``."""
    if value == 0:
        return "0 s"
    if abs(value) < 0.01:
        return f"{value * 1000:.1f} ms"
    if abs(value) < 1:
        return f"{value * 1000:.0f} ms"
    if abs(value) < 120:
        return f"{value:.3g} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s"


def legend(items: Iterable[tuple[str, str]], x: float, y: float, *, swatch: str = "rect") -> tuple[str, float]:
    """A one-line legend of ``(label, colour)`` swatches starting at ``(x, y)``; the markup and its width."""
    parts = []
    cursor = x
    for label, color in items:
        if swatch == "line":
            parts.append(
                f"<line x1='{cursor:.1f}' y1='{y - 4:.1f}' x2='{cursor + 12:.1f}' y2='{y - 4:.1f}' "
                f"stroke='{color}' stroke-width='2'/>"
            )
        else:
            parts.append(f"<rect x='{cursor:.1f}' y='{y - 9:.1f}' width='10' height='10' fill='{color}'/>")
        parts.append(f"<text x='{cursor + 14:.1f}' y='{y:.1f}'>{esc(label)}</text>")
        cursor += 14 + 6.2 * len(label) + 12
    return "".join(parts), cursor - x
