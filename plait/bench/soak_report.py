"""The soak's report as tables: its operations per kind, the resources sampled, and the invariants' verdicts, from
the report dict ``plait.bench.soak`` writes as JSON (so a saved report renders the same)."""

from __future__ import annotations

from typing import Any

from plait.bench.soak_trend import MIB


def print_tables(report: dict[str, Any], print_table: Any) -> None:
    rows = []
    for kind, k in report["kinds"].items():
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(k["outcomes"].items())) or "-"
        statuses = ", ".join(f"{status}: {count}" for status, count in k["statuses"].items()) or "-"
        rows.append(
            [
                kind,
                k["operations"],
                k["unexpected"],
                outcomes,
                statuses,
                seconds(k["latency_p50_s"]),
                seconds(k["latency_p99_s"]),
                seconds(k["latency_max_s"]),
            ]
        )
    params = report["params"]
    print_table(
        f"soak: {params['minutes']:g} min, {params['clients']} clients, {report['operations']} operations, "
        f"every HTTP status {report['statuses']}",
        ["kind", "ops", "unexpected", "outcomes", "HTTP statuses", "p50", "p99", "max"],
        rows,
    )
    rss, journal = report["rss"], report["journal"]
    measures = [
        ["RSS (MiB)", mib(rss["first_mib"]), mib(rss["last_mib"]), mib(rss["peak_mib"]), slope(rss)],
        [
            "KV in use",
            "-",
            ratio(report["kv"]["after"].get("kv_usage_ratio")),
            ratio(report["kv"]["peak_usage_ratio"]),
            "-",
        ],
        [
            "journal (MiB)",
            mib(journal["first_bytes"] / MIB if journal["first_bytes"] is not None else None),
            mib(journal["last_bytes"] / MIB if journal["last_bytes"] is not None else None),
            mib(journal["peak_bytes"] / MIB if journal["peak_bytes"] is not None else None),
            f"{journal['slope_mib_per_h']:+.1f} MiB/h" if journal["slope_mib_per_h"] is not None else "-",
        ],
    ]
    print_table("soak: resources (first, last, peak sample)", ["measure", "first", "last", "peak", "slope"], measures)
    print_table(
        "soak: invariants",
        ["invariant", "result", "measured", "rule"],
        [[c["name"], "ok" if c["ok"] else "FAILED", c["measured"], c["rule"]] for c in report["invariants"]],
    )


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def slope(rss: dict[str, Any]) -> str:
    if rss.get("slope_mib_per_h") is None:
        return "-"
    return f"{rss['slope_mib_per_h']:+.1f} ± {rss['slope_stderr_mib_per_h']:.1f} MiB/h"
