"""The dashboard: a live page on ``plait serve`` (``GET /dashboard``) and the same views as a static HTML report.

Owns: the dashboard's routes and sign-in cookie (``api_router``, ``dashboard_auth``), the KV history sampled from
``EngineStats`` (``kv_history``), program snapshots (``program_snapshot``) and their pictures as server-rendered SVG
(``graph_svg``, ``timeline_svg``, ``charts_svg``), the page itself (``page``) and the offline report
(``report_html``, used by ``plait bench workflow --trace`` and ``plait bench replay``).
May import: what ``plait.server`` may (``plait.runtime``, ``plait.engine``, ... through their public APIs) and the
rest of ``plait.server``.
"""

from __future__ import annotations

from plait.server.dashboard.kv_history import KVHistory, KVSample, kv_history_of
from plait.server.dashboard.program_snapshot import (
    LiveSpan,
    NodeSnapshot,
    ProgramSnapshot,
    program_trace,
    snapshot_of,
    snapshots_from_events,
)
from plait.server.dashboard.report_html import (
    render_report_html,
    report_page,
    report_section,
    write_report_html,
    write_timeline_report,
)

__all__ = [
    "KVHistory",
    "KVSample",
    "LiveSpan",
    "NodeSnapshot",
    "ProgramSnapshot",
    "kv_history_of",
    "program_trace",
    "render_report_html",
    "report_page",
    "report_section",
    "snapshot_of",
    "snapshots_from_events",
    "write_report_html",
    "write_timeline_report",
]
