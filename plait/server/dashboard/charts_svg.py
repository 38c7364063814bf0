"""Charts of ``KVSample`` histories as SVG: the KV pool over time (stacked) and simple line charts (queue depth,
throughput).

The KV chart stacks the device pool's disjoint parts (``KVSample.layers``) as a share of the pool, and draws the host
tier's use as a dashed line (a share of the host tier) when there is one. Its root carries ``data-samples``,
``data-peak-running``, ``data-peak-held`` (running, pinned, cached or reserved) and ``data-last-running`` (slots),
which pages and tests read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from plait.server.dashboard.kv_history import KVSample
from plait.server.dashboard.svg import esc, fmt_number, fmt_seconds, legend, nice_ticks, svg_open

WIDTH, HEIGHT = 560, 190
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 26, 24
MAX_POINTS = 480  # drawn per series; longer histories are thinned evenly (the last sample always kept)

KV_LAYERS: tuple[tuple[str, str, str], ...] = (  # layer, legend label, colour
    ("running", "running", "#1a73e8"),
    ("pinned", "pinned", "#a142f4"),
    ("cached", "cached", "#81c995"),
    ("reserved", "reserved", "#fdd663"),
)
HOST_COLOR = "#e8710a"


def _thin(samples: Sequence[KVSample]) -> list[KVSample]:
    if len(samples) <= MAX_POINTS:
        return list(samples)
    step = len(samples) / MAX_POINTS
    kept = [samples[int(i * step)] for i in range(MAX_POINTS - 1)]
    kept.append(samples[-1])
    return kept


class _Axes:
    """Maps (time, value) onto the plot area; times are labelled from ``origin`` (None: back from the last)."""

    def __init__(self, t0: float, t1: float, y_max: float, origin: float | None, width: float, height: float):
        self.t0, self.t1 = t0, max(t1, t0 + 1e-3)
        self.y_max = y_max if y_max > 0 else 1.0
        self.origin = origin
        self.width, self.height = width, height

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) / (self.t1 - self.t0) * (self.width - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return self.height - BOTTOM - min(value, self.y_max) / self.y_max * (self.height - TOP - BOTTOM)

    def grid(self, y_label: Callable[[float], str]) -> str:
        out = []
        for tick in nice_ticks(0.0, self.y_max, 4):
            y = self.y(tick)
            out.append(f"<line x1='{LEFT}' y1='{y:.1f}' x2='{self.width - RIGHT}' y2='{y:.1f}' stroke='#e8eaed'/>")
            out.append(f"<text x='{LEFT - 4}' y='{y + 4:.1f}' text-anchor='end'>{esc(y_label(tick))}</text>")
        if self.origin is None:  # seconds before the last sample
            ticks = [self.t1 - s for s in nice_ticks(0.0, self.t1 - self.t0, 5)]
            label = lambda t: "now" if abs(self.t1 - t) < 1e-9 else f"-{fmt_seconds(self.t1 - t)}"  # noqa: E731
        else:
            ticks = [self.origin + s for s in nice_ticks(self.t0 - self.origin, self.t1 - self.origin, 6)]
            label = lambda t: fmt_seconds(t - self.origin)  # noqa: E731
        base = self.height - BOTTOM
        for t in ticks:
            if self.t0 - 1e-9 <= t <= self.t1 + 1e-9:
                x = self.x(t)
                out.append(f"<line x1='{x:.1f}' y1='{base}' x2='{x:.1f}' y2='{base + 4}' stroke='#5f6368'/>")
                out.append(f"<text x='{x:.1f}' y='{base + 16}' text-anchor='middle'>{esc(label(t))}</text>")
        out.append(
            f"<line x1='{LEFT}' y1='{base}' x2='{self.width - RIGHT}' y2='{base}' stroke='#5f6368'/>"
            f"<line x1='{LEFT}' y1='{TOP}' x2='{LEFT}' y2='{base}' stroke='#5f6368'/>"
        )
        return "".join(out)


def _empty(title: str, width: float, height: float) -> str:
    return (
        svg_open(width, height, title, "class='chart' data-samples='0'")
        + f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#5f6368'>{esc(title)}: no samples yet"
        "</text></svg>"
    )


def kv_chart_svg(
    samples: Sequence[KVSample],
    *,
    origin: float | None = None,
    split: bool = True,
    width: float = WIDTH,
    height: float = HEIGHT,
) -> str:
    """The device KV pool over time, stacked as a share of the pool: running, pinned, cached, reserved (free is the
    rest); the host tier's use as a dashed line when there is one. ``split`` False: the samples hold only the share
    in use (``running`` of a pool of size 1), drawn as one area."""
    title = "KV cache"
    layers = KV_LAYERS if split else (("running", "in use", KV_LAYERS[0][2]),)
    drawn = _thin(samples)
    if not drawn:
        return _empty(title, width, height)
    axes = _Axes(drawn[0].at, drawn[-1].at, 100.0, origin, width, height)
    peak = max(s.layers()["running"] for s in samples)
    held = max(s.total - s.layers()["free"] for s in samples)
    attrs = (
        f"class='chart kv-chart' data-samples='{len(samples)}' data-peak-running='{peak:.0f}' "
        f"data-peak-held='{held:.0f}' data-last-running='{drawn[-1].layers()['running']:.0f}'"
    )
    out = [svg_open(width, height, title, attrs), axes.grid(lambda v: f"{v:.0f}%")]
    below = [0.0] * len(drawn)
    for layer, label, color in layers:
        above = [b + (s.layers()[layer] / s.total * 100 if s.total else 0.0) for b, s in zip(below, drawn, strict=True)]
        top = [f"{axes.x(s.at):.1f},{axes.y(v):.1f}" for s, v in zip(drawn, above, strict=True)]
        bottom = [f"{axes.x(s.at):.1f},{axes.y(v):.1f}" for s, v in zip(drawn, below, strict=True)][::-1]
        if len(drawn) == 1:  # one sample: a sliver, so it shows
            x = axes.x(drawn[0].at)
            top.append(f"{x + 2:.1f},{axes.y(above[0]):.1f}")
            bottom.insert(0, f"{x + 2:.1f},{axes.y(below[0]):.1f}")
        out.append(
            f"<polygon class='layer' data-layer='{layer}' fill='{color}' fill-opacity='0.85' "
            f"points='{' '.join(top + bottom)}'><title>{esc(label)}</title></polygon>"
        )
        below = above
    host = any(s.host_total > 0 for s in drawn)
    if host:
        points = " ".join(
            f"{axes.x(s.at):.1f},{axes.y(s.host_used / s.host_total * 100 if s.host_total else 0):.1f}" for s in drawn
        )
        out.append(
            f"<polyline class='host' fill='none' stroke='{HOST_COLOR}' stroke-width='2' stroke-dasharray='5 3' "
            f"points='{points}'><title>host tier (share of the host tier)</title></polyline>"
        )
    items = [(label, color) for _, label, color in layers]
    if host:
        items.append(("host tier", HOST_COLOR))
    out.append(legend(items, LEFT, 14)[0])
    pool = f"of {fmt_number(drawn[-1].total)} slots" if split else "share of the pool in use"
    out.append(f"<text x='{width - RIGHT}' y='14' text-anchor='end' fill='#5f6368'>{pool}</text>")
    out.append("</svg>")
    return "".join(out)


def line_chart_svg(
    samples: Sequence[KVSample],
    series: Sequence[tuple[str, str, Callable[[KVSample], float]]],
    *,
    title: str,
    origin: float | None = None,
    width: float = WIDTH,
    height: float = 150,
) -> str:
    """``series`` (legend label, colour, value of a sample) over time, on one axis from 0."""
    drawn = _thin(samples)
    if not drawn:
        return _empty(title, width, height)
    values = [[value(s) for s in drawn] for _, _, value in series]
    y_max = max((max(v) for v in values), default=0.0)
    axes = _Axes(drawn[0].at, drawn[-1].at, y_max * 1.1 if y_max > 0 else 1.0, origin, width, height)
    out = [svg_open(width, height, title, f"class='chart' data-samples='{len(samples)}'"), axes.grid(fmt_number)]
    for (label, color, _), points in zip(series, values, strict=True):
        coords = " ".join(f"{axes.x(s.at):.1f},{axes.y(v):.1f}" for s, v in zip(drawn, points, strict=True))
        out.append(
            f"<polyline fill='none' stroke='{color}' stroke-width='1.8' points='{coords}'>"
            f"<title>{esc(label)}</title></polyline>"
        )
    out.append(legend([(label, color) for label, color, _ in series], LEFT, 14, swatch="line")[0])
    out.append(f"<text x='{width - RIGHT}' y='14' text-anchor='end' fill='#5f6368'>{esc(title)}</text></svg>")
    return "".join(out)


def queue_chart_svg(samples: Sequence[KVSample], *, origin: float | None = None) -> str:
    """Engine requests waiting and running over time."""
    return line_chart_svg(
        samples,
        [
            ("waiting", "#d93025", lambda s: s.waiting_requests),
            ("running", "#1a73e8", lambda s: s.running_requests),
        ],
        title="requests",
        origin=origin,
    )


def throughput_chart_svg(samples: Sequence[KVSample], *, origin: float | None = None) -> str:
    """Decode and prefill tokens per second over time (the engine's rates over its last few seconds)."""
    return line_chart_svg(
        samples,
        [
            ("decode tok/s", "#1a73e8", lambda s: s.decode_tokens_per_s),
            ("prefill tok/s", "#f29900", lambda s: s.prefill_tokens_per_s),
        ],
        title="tokens per second",
        origin=origin,
    )
