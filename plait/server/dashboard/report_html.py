"""The dashboard's views as one static HTML file, for benchmark reports: KV pool, queue depth and throughput over the
run, the programs (state, duration, nodes) and each program's graph and timeline, drawn by the same functions as the
live page. No script: every picture is inline SVG, each program a ``<details>`` element.

Bounded for big runs: the table lists at most ``MAX_LISTED`` programs and at most ``MAX_DETAILED`` get their pictures
(the longest-running first); the page says how many were left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plait.runtime.timeline import Timeline
from plait.server.dashboard.charts_svg import kv_chart_svg, queue_chart_svg, throughput_chart_svg
from plait.server.dashboard.graph_svg import graph_svg
from plait.server.dashboard.kv_history import KVSample
from plait.server.dashboard.page import STYLE
from plait.server.dashboard.program_snapshot import ProgramSnapshot, snapshots_from_events
from plait.server.dashboard.svg import esc, fmt_seconds
from plait.server.dashboard.timeline_svg import timeline_svg

MAX_LISTED = 2000
MAX_DETAILED = 100
SAMPLE_MARGIN_S = 1.0  # KV samples kept before the first and after the last program


def _duration(snapshot: ProgramSnapshot) -> float:
    return snapshot.end(snapshot.created_at) - snapshot.created_at


def render_report_html(
    title: str, programs: Sequence[ProgramSnapshot], samples: Sequence[KVSample], **options: Any
) -> str:
    """The report page of one run (``options``: those of ``report_section``)."""
    return report_page(title, [report_section(title, programs, samples, **options)])


def report_page(title: str, sections: Sequence[str]) -> str:
    """A whole HTML page of ``report_section`` results."""
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body>{'<hr>'.join(sections)}</body></html>"
    )


def report_section(
    title: str,
    programs: Sequence[ProgramSnapshot],
    samples: Sequence[KVSample],
    *,
    origin: float | None = None,
    summary: Mapping[str, Any] | None = None,
    links: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
    kv_split: bool = True,
    anchor: str = "p",
) -> str:
    """The views of one run. Times are labelled in seconds from ``origin`` (default: the first program's start).
    ``links`` are ``(label, relative href)`` pairs (the Chrome trace, the JSON); ``kv_split``: the samples tell
    running, cached, pinned and reserved apart (False: they hold only the share in use, drawn as running);
    ``anchor`` prefixes the programs' element ids (distinct per section of one page)."""
    if origin is None:
        origin = min((p.created_at for p in programs), default=samples[0].at if samples else 0.0)
    out = [f"<header><h1>{esc(title)}</h1><span class='muted'>plait offline dashboard</span></header><main>"]
    if summary:
        out.append("<section><dl class='facts'>")
        out.extend(f"<dt>{esc(key)}</dt><dd>{esc(value)}</dd>" for key, value in summary.items())
        out.append("</dl></section>")
    if links:
        out.append("<p>" + " · ".join(f"<a href='{esc(href)}'>{esc(label)}</a>" for label, href in links) + "</p>")
    out.append("<section><h2>KV cache, queue and throughput</h2><div class='charts'>")
    out.append(kv_chart_svg(samples, origin=origin, split=kv_split))
    if kv_split:
        out.append(queue_chart_svg(samples, origin=origin))
        out.append(throughput_chart_svg(samples, origin=origin))
    else:
        out.append("<p class='muted'>The KV chart shows the share of the pool in use (the source has no split).</p>")
    out.append("</div></section>")
    detailed = sorted(range(len(programs)), key=lambda i: -_duration(programs[i]))[:MAX_DETAILED]
    anchors = {index: f"{esc(anchor)}{n}" for n, index in enumerate(sorted(detailed))}
    out.append(f"<section><h2>Programs ({len(programs)})</h2><div class='scroll'><table><thead><tr>")
    out.append("<th>program</th><th>state</th><th class='num'>start</th><th class='num'>duration</th>")
    out.append("<th class='num'>nodes</th><th class='num'>events</th></tr></thead><tbody>")
    for index, snapshot in enumerate(programs[:MAX_LISTED]):
        shown = snapshot.name if snapshot.name == snapshot.program_id else f"{snapshot.name} ({snapshot.program_id})"
        name = esc(shown)
        label = f"<a href='#{anchors[index]}'>{name}</a>" if index in anchors else name
        out.append(
            f"<tr><td>{label}</td><td><span class='state state-{esc(snapshot.state)}'>{esc(snapshot.state)}</span>"
            f"</td><td class='num'>{esc(fmt_seconds(snapshot.created_at - origin))}</td>"
            f"<td class='num'>{esc(fmt_seconds(_duration(snapshot)))}</td><td class='num'>{len(snapshot.nodes)}</td>"
            f"<td class='num'>{len(snapshot.events)}</td></tr>"
        )
    out.append("</tbody></table></div>")
    left_out = []
    if len(programs) > MAX_LISTED:
        left_out.append(f"{len(programs) - MAX_LISTED} more programs not listed")
    if len(programs) > MAX_DETAILED:
        left_out.append(f"pictures for the {MAX_DETAILED} longest-running programs only")
    out.extend(f"<p class='muted'>{esc(note)}</p>" for note in [*left_out, *notes])
    out.append("</section><section><h2>Program graphs and timelines</h2>")
    for index in sorted(detailed):
        snapshot = programs[index]
        out.append(
            f"<details id='{anchors[index]}'><summary>{esc(snapshot.name)} <span class='muted'>"
            f"{esc(snapshot.program_id)} · {esc(snapshot.state)} · {esc(fmt_seconds(_duration(snapshot)))}"
            "</span></summary>"
        )
        out.append("<h2>Graph</h2><div class='scroll'>")
        out.append(
            graph_svg(snapshot.nodes, snapshot.edges, edges_known=snapshot.edges_known, omitted=snapshot.omitted_nodes)
        )
        out.append("</div><h2>Timeline</h2><div class='scroll'>")
        out.append(timeline_svg(snapshot, snapshot.end(snapshot.created_at)))
        out.append("</div></details>")
    out.append("</section></main>")
    return "".join(out)


def write_report_html(path: str | Path, html: str) -> Path:
    """Write ``html`` to ``path`` (parent directories created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return target


def write_timeline_report(
    path: str | Path,
    timeline: Timeline,
    samples: Sequence[KVSample],
    *,
    title: str,
    summary: Mapping[str, Any] | None = None,
    links: Sequence[tuple[str, str]] = (),
) -> Path:
    """The report of a run recorded by a planner's ``timeline`` and ``KVHistory`` samples on the same clock: its
    programs from the timeline, the samples within the programs' time range (plus a margin)."""
    programs = snapshots_from_events(timeline.events())
    notes = [f"the timeline dropped {timeline.dropped} events (it was full)"] if timeline.dropped else []
    if programs:
        first = min(p.created_at for p in programs) - SAMPLE_MARGIN_S
        last = max(p.end(p.created_at) for p in programs) + SAMPLE_MARGIN_S
        samples = [s for s in samples if first <= s.at <= last]
    html = render_report_html(title, programs, samples, summary=summary, links=links, notes=notes)
    return write_report_html(path, html)
