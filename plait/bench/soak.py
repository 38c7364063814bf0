"""``plait bench soak``: a server under a bounded mixed load for minutes; what must not degrade, checked.

Starts ``plait serve`` as a subprocess on 127.0.0.1 (a free port; the default model unless engine flags say
otherwise; the soak's tools; a temporary data directory and a short retention when ``plait serve`` has
``--data-dir`` and ``--retain-finished-s``), or targets ``--target URL``. Then ``--clients`` clients run operations
one after another for ``--minutes``, and at least until every kind has run once: chats (whole and streamed), REST
workflows with a tool, cancels (``DELETE`` mid-decode and mid-tool), client disconnects (a chat stream and a
workflow's event stream closed mid-way) and tool failures (a server tool that raises); see
``plait.bench.soak_load``. Every request has a timeout; every HTTP status is counted. Every few seconds it samples
the server's RSS, its KV use (``/metrics``) and the journal's size on disk.

Invariants (the exit status is 1 when one fails, and the message says which): no 5xx (each is reported with its
body); every operation ends as its kind expects; KV in use back to 0 once the load stops (within
``--idle-timeout``); the RSS slope after the warm-up at most ``--max-rss-slope`` MiB/h; the journal bounded (no new
growth after the retention horizon); the server still running at the end. A run too short for a trend verdict says
"inconclusive" (see ``plait.bench.soak_trend``), which is reported and not a failure.

Writes JSON (every sample, every 5xx, per-kind latencies), a plot of RSS, KV and journal size over time beside it
(matplotlib, the ``bench`` extra) and the server's log, then prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plait.bench.serve_load import percentile, wait_idle
from plait.bench.serve_process import ServeProcess, engine_flags, serve_options
from plait.bench.soak_invariants import invariants, rss_warmup_s
from plait.bench.soak_load import SCHEDULE, HttpLog, Kind, LoadSettings, Operation, SoakClient, run_load
from plait.bench.soak_monitor import Monitor, Sample, plot_samples
from plait.bench.soak_report import print_tables
from plait.bench.soak_tools import TOOL_NAMES, TOOLS_SPEC
from plait.bench.soak_trend import (
    MAX_RSS_SLOPE_MIB_PER_H,
    MIB,
    journal_trend,
    rss_trend,
)
from plait.cli.engine_args import add_engine_arguments, add_plan_argument

IDLE_TIMEOUT_S = 60.0
# The RSS fit starts after the warm-up time and after this many operations have ended, whichever is later: the
# server's memory grows with its first requests of each kind (allocator arenas, tokenizer and compile caches), which
# a slow machine reaches later in time, not in work.
WARMUP_OPERATIONS = 100
# How often the server's journal deletes expired workflows (``plait.runtime.journal.Journal``'s sweep interval): a
# finished workflow leaves the journal between ``retain_finished_s`` and ``retain_finished_s + JOURNAL_SWEEP_S`` after
# it ends, so the journal's size settles once that much time has passed (twice that, for its freed pages to be reused).
JOURNAL_SWEEP_S = 60.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "soak",
        help="a server under a mixed load for minutes: no 5xx, KV back to 0, RSS flat, journal bounded",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs (a float: 0.2 is 12 s)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients, each one operation at a time")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of chats and short LLM calls")
    parser.add_argument(
        "--long-tokens", type=int, default=128, help="max_tokens of the calls that are cancelled or disconnected"
    )
    parser.add_argument("--request-timeout", type=float, default=120.0, help="every HTTP request's timeout, seconds")
    parser.add_argument(
        "--operation-timeout", type=float, default=300.0, help="an operation's whole time limit, seconds"
    )
    parser.add_argument(
        "--sample-interval", type=float, default=None, help="seconds between samples (default: duration/40, 0.5..5)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds excluded from the RSS fit (default: 25%% of the run, <= 300)",
    )
    parser.add_argument(
        "--warmup-operations",
        type=int,
        default=WARMUP_OPERATIONS,
        help="operations that must have ended before the RSS fit starts (default %(default)s: every kind several "
        "times, so that each path has taken its caches)",
    )
    parser.add_argument(
        "--max-rss-slope",
        type=float,
        default=MAX_RSS_SLOPE_MIB_PER_H,
        help="RSS slope above which the server is growing, MiB per hour (default %(default)s)",
    )
    parser.add_argument(
        "--retain-finished-s",
        type=float,
        default=None,
        help="how long finished workflows stay in the journal: passed to plait serve when it has the flag "
        "(default: 25%% of the run, 5..60 s, so that the journal's bound shows within the run); with --target, the "
        "target's setting (sets the journal horizon)",
    )
    parser.add_argument(
        "--journal-horizon",
        type=float,
        default=None,
        help="seconds after which the journal must stop growing (default: 2 x (retention + "
        f"{JOURNAL_SWEEP_S:g} s sweep), at least the warm-up)",
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=IDLE_TIMEOUT_S, help="longest wait for KV back to 0, seconds"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the server's data directory (its journal), measured; passed to plait serve when it has --data-dir "
        "(default: a temporary one, deleted afterwards)",
    )
    parser.add_argument(
        "--target",
        default=None,
        metavar="URL",
        help="an already running server (started with --tools " + TOOLS_SPEC + ")",
    )
    parser.add_argument("--api-key", default=None, help="bearer key for --target")
    parser.add_argument("--server-pid", type=int, default=None, help="the --target server's process id, for its RSS")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON path (default plait-results/soak_<device>_<date>.json)"
    )
    add_plan_argument(parser, served=True)
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


@dataclass
class SoakSettings:
    """What one soak runs and how it judges, resolved from the flags."""

    duration_s: float
    clients: int
    load: LoadSettings
    sample_interval_s: float
    warmup_s: float
    warmup_operations: int
    max_rss_slope_mib_per_h: float
    idle_timeout_s: float
    request_timeout_s: float
    retain_finished_s: float | None = None  # the server's retention (None: unknown, or the server has none)
    journal_horizon_s: float | None = None  # None: from the retention (``journal_horizon``)

    def journal_horizon(self) -> float:
        """Seconds after the load's start from which the journal's size must be flat."""
        if self.journal_horizon_s is not None:
            return self.journal_horizon_s
        if self.retain_finished_s is None:
            return self.warmup_s
        return max(self.warmup_s, 2 * (self.retain_finished_s + JOURNAL_SWEEP_S))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SoakSettings:
        duration_s = args.minutes * 60.0
        if duration_s <= 0 or args.clients < 1:
            raise ValueError("--minutes must be > 0 and --clients >= 1")
        interval = args.sample_interval or min(5.0, max(0.5, duration_s / 40))
        warmup = args.warmup if args.warmup is not None else min(300.0, 0.25 * duration_s)
        retain = args.retain_finished_s
        if retain is None and not args.target:
            retain = min(60.0, max(5.0, duration_s / 4))
        load = LoadSettings(args.max_tokens, args.long_tokens, operation_timeout_s=args.operation_timeout)
        return cls(
            duration_s=duration_s,
            clients=args.clients,
            load=load,
            sample_interval_s=interval,
            warmup_s=warmup,
            warmup_operations=args.warmup_operations,
            max_rss_slope_mib_per_h=args.max_rss_slope,
            idle_timeout_s=args.idle_timeout,
            request_timeout_s=args.request_timeout,
            retain_finished_s=retain,
            journal_horizon_s=args.journal_horizon,
        )


@dataclass
class SoakRun:
    """What a soak observed."""

    operations: list[Operation]
    http: HttpLog
    samples: list[Sample]
    idle_after: dict[str, Any]
    idle_wait_s: float
    load_s: float  # from the start to the last operation's end
    metrics_failures: list[str] = field(default_factory=list)
    server_exit: int | None = None  # the started server's exit code when it ended before being stopped


async def soak(
    base_url: str,
    settings: SoakSettings,
    *,
    api_key: str | None = None,
    server: ServeProcess | None = None,
    server_pid: int | None = None,
    journal_dir: Path | None = None,
    on_tick: Callable[[float, list[Operation], HttpLog], None] | None = None,
) -> SoakRun:
    """Run the load against ``base_url`` while sampling, then wait for an idle engine. ``on_tick(run_s, operations,
    http)`` is called twice a second (progress)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(settings.request_timeout_s, connect=30.0)
    limits = httpx.Limits(max_connections=4 * settings.clients + 8)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits) as client:
        started = time.monotonic()
        http = HttpLog(started)
        pid = server.pid if server is not None else server_pid
        monitor = Monitor(
            client, settings.sample_interval_s, pid=pid, journal_dir=journal_dir, started=started, record=http.record
        )
        sampling = asyncio.create_task(monitor.run())
        operations: list[Operation] = []

        def server_gone() -> bool:
            return server is not None and server.exit_code() is not None

        async def ticks() -> None:
            while True:
                run_s = time.monotonic() - started
                if run_s >= settings.duration_s and monitor.phase == "load":
                    monitor.phase = "drain"
                if on_tick is not None:
                    on_tick(run_s, operations, http)
                await asyncio.sleep(0.5)

        ticking = asyncio.create_task(ticks())
        soak_client = SoakClient(client, http, settings.load)
        try:
            await run_load(
                soak_client,
                clients=settings.clients,
                duration_s=settings.duration_s,
                should_stop=server_gone,
                on_operation=operations.append,
            )
            load_s = time.monotonic() - started
            monitor.phase = "idle"
            idle_started = time.monotonic()
            idle_after: dict[str, Any] = {"idle": False, "error": "the server exited"}
            if not server_gone():
                idle_after = await wait_idle(client, None, timeout_s=settings.idle_timeout_s)
            idle_wait_s = time.monotonic() - idle_started
        finally:
            ticking.cancel()
            monitor.stop()
            await asyncio.gather(sampling, ticking, return_exceptions=True)
        if not server_gone():
            # Every operation has seen its workflow end, so no program may still run once the engine is idle.
            deadline = idle_started + settings.idle_timeout_s
            final = await monitor.sample()
            while final.running_programs and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                final = await monitor.sample()
            idle_after["running_programs"] = final.running_programs
            idle_after["idle"] = bool(idle_after.get("idle")) and not final.running_programs
            idle_wait_s = time.monotonic() - idle_started
        if on_tick is not None:
            on_tick(time.monotonic() - started, operations, http)
    return SoakRun(
        operations=sorted(operations, key=lambda o: o.index),
        http=http,
        samples=monitor.samples,
        idle_after=idle_after,
        idle_wait_s=idle_wait_s,
        load_s=load_s,
        metrics_failures=monitor.metrics_failures,
        server_exit=server.exit_code() if server is not None else None,
    )


def kinds_summary(operations: list[Operation], http: HttpLog) -> dict[str, dict[str, Any]]:
    """Per kind: operations, expected and unexpected outcomes, latency percentiles, HTTP statuses."""
    by_kind = http.by_kind()
    summary: dict[str, dict[str, Any]] = {}
    for kind in Kind:
        mine = [o for o in operations if o.kind is kind]
        latencies = [o.latency_s for o in mine]
        outcomes: dict[str, int] = {}
        for o in mine:
            key = o.outcome if o.ok else "unexpected"
            outcomes[key] = outcomes.get(key, 0) + 1
        summary[str(kind)] = {
            "operations": len(mine),
            "ok": sum(o.ok for o in mine),
            "unexpected": sum(not o.ok for o in mine),
            "outcomes": outcomes,
            "latency_p50_s": percentile(latencies, 50),
            "latency_p99_s": percentile(latencies, 99),
            "latency_max_s": max(latencies, default=None),
            "statuses": by_kind.get(str(kind), {}),
        }
    return summary


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from plait.bench.report import default_output, print_table, write_json

    console = Console()
    try:
        settings = SoakSettings.from_args(args)
    except ValueError as error:
        console.print(f"[red]error[/red]: {error}")
        return 2
    output = args.output or default_output("soak")
    server: ServeProcess | None = None
    temporary: Path | None = None
    journal_dir: Path | None = args.data_dir
    server_desc = args.target
    if args.target:
        base_url = args.target.rstrip("/")
    else:
        flags, journal_dir, temporary, notes = _server_flags(args, settings)
        for note in notes:
            console.print(note)
        server = ServeProcess(flags)
        server_desc = " ".join(["plait serve", *server.command[4:]])
        console.print(f"starting {server_desc} ...", soft_wrap=True)
        try:
            base_url = server.start()
            server.wait_ready(base_url)
        except RuntimeError as error:
            server.stop()
            console.print(f"[red]error[/red]: {error}")
            _cleanup(temporary)
            return 1
    try:
        model_id = _check_target(base_url, args.api_key)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=args.no_progress,
        ) as progress:
            task = progress.add_task("soak", total=settings.duration_s)

            def on_tick(run_s: float, operations: list[Operation], http: HttpLog) -> None:
                five = len(http.server_errors)
                unexpected = sum(not o.ok for o in operations)
                phase = "load" if run_s < settings.duration_s else "finishing"
                description = f"soak ({phase}): {len(operations)} ops, {unexpected} unexpected, {five} 5xx"
                progress.update(task, completed=min(run_s, settings.duration_s), description=description)

            result = asyncio.run(
                soak(
                    base_url,
                    settings,
                    api_key=args.api_key,
                    server=server,
                    server_pid=args.server_pid,
                    journal_dir=journal_dir,
                    on_tick=on_tick,
                )
            )
    except RuntimeError as error:
        console.print(f"[red]error[/red]: {error}")
        return 1
    finally:
        exit_code = server.stop() if server is not None else None
        _cleanup(temporary)
    report = _report(
        result,
        settings,
        model_id=model_id,
        server=server_desc,
        started_server=server is not None,
        journal_dir=journal_dir,
        output=output,
    )
    report["server_exit_code_after_stop"] = exit_code
    plot_path = output.with_suffix(".png")
    try:
        plot_samples(
            result.samples,
            plot_path,
            title=f"plait bench soak: {settings.duration_s / 60:g} min, {settings.clients} clients, {model_id}",
            rss_fit=report["rss"],
        )
        report["plot"] = str(plot_path)
    except ImportError:
        report["plot"] = None
        console.print("no plot: matplotlib is not installed (pip install 'plait[bench]')")
    if server is not None:
        log_path = output.with_suffix(".serve.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(server.log)
        report["server_log"] = str(log_path)
    path = write_json(output, report)
    console.print(f"wrote {path}" + (f" and {report['plot']}" if report["plot"] else ""), soft_wrap=True)
    for error in result.http.server_errors[:10]:
        console.print(
            f"[red]{error.status}[/red] {error.method} {error.path} ({error.kind}, t={error.t_s:.0f} s): "
            f"{error.body[:500]}"
        )
    for operation in [o for o in result.operations if not o.ok][:10]:
        console.print(f"[yellow]unexpected[/yellow] {operation.kind} #{operation.index}: {operation.error[:500]}")
    print_tables(report, print_table)
    failed = [check for check in report["invariants"] if not check["ok"]]
    if failed:
        console.print("[red]soak FAILED[/red]: " + "; ".join(f"{c['name']} ({c['measured']})" for c in failed))
        return 1
    return 0


def _server_flags(
    args: argparse.Namespace, settings: SoakSettings
) -> tuple[list[str], Path | None, Path | None, list[str]]:
    """``plait serve`` flags for the soak: the tools, engine flags and plan, and (when this checkout's ``plait serve``
    has them) a data directory and a retention; also the journal directory, the temporary directory to delete, and
    notes to print."""
    options = serve_options()
    flags = ["--tools", TOOLS_SPEC, "--log-level", "warning", *engine_flags(args)]
    for item in args.plan:
        flags += ["--plan", item]
    notes: list[str] = []
    journal_dir: Path | None = None
    temporary: Path | None = None
    if "--data-dir" in options:
        if args.data_dir is None:
            temporary = Path(tempfile.mkdtemp(prefix="plait-soak-"))
        journal_dir = args.data_dir or temporary
        flags += ["--data-dir", str(journal_dir)]
    else:
        notes.append("plait serve has no --data-dir here: no journal to measure")
    if "--retain-finished-s" in options and settings.retain_finished_s is not None:
        flags += ["--retain-finished-s", f"{settings.retain_finished_s:g}"]
    else:
        settings.retain_finished_s = None
        if journal_dir is not None:
            notes.append("plait serve has no --retain-finished-s here: the journal keeps every finished workflow")
    return flags, journal_dir, temporary, notes


def _check_target(base_url: str, api_key: str | None) -> str:
    """The served model's id; ``RuntimeError`` when the server lacks the soak's tools."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    model_id = str(httpx.get(f"{base_url}/v1/models", headers=headers, timeout=60).json()["data"][0]["id"])
    tools = {t["name"] for t in httpx.get(f"{base_url}/v1/tools", headers=headers, timeout=60).json()["data"]}
    missing = [name for name in TOOL_NAMES if name not in tools]
    if missing:
        raise RuntimeError(f"the server lacks the tools {missing}: start it with --tools {TOOLS_SPEC}")
    return model_id


def _report(
    result: SoakRun,
    settings: SoakSettings,
    *,
    model_id: str,
    server: str | None,
    started_server: bool,
    journal_dir: Path | None,
    output: Path,
) -> dict[str, Any]:
    load_samples = [s for s in result.samples if s.phase == "load" and s.rss_bytes is not None]
    rss = rss_trend(
        [s.t_s for s in load_samples],
        [float(s.rss_bytes or 0) for s in load_samples],
        warmup_s=rss_warmup_s(result.operations, settings),
        max_slope_mib_per_h=settings.max_rss_slope_mib_per_h,
    )
    journal = journal_trend(
        [s.t_s for s in result.samples],
        [s.journal_bytes for s in result.samples],
        horizon_s=settings.journal_horizon(),
    )
    rss_values = [s.rss_bytes for s in result.samples if s.rss_bytes is not None]
    journal_values = [s.journal_bytes for s in result.samples if s.journal_bytes is not None]
    kv_load = [s.kv_usage_ratio for s in result.samples if s.kv_usage_ratio is not None and s.phase != "idle"]
    checks = invariants(result, rss, journal, started_server=started_server)
    return {
        "bench": "soak",
        "model": model_id,
        "server": server,
        "params": {
            "minutes": settings.duration_s / 60,
            "clients": settings.clients,
            **asdict(settings.load),
            "sample_interval_s": settings.sample_interval_s,
            "warmup_s": settings.warmup_s,
            "warmup_operations": settings.warmup_operations,
            "max_rss_slope_mib_per_h": settings.max_rss_slope_mib_per_h,
            "idle_timeout_s": settings.idle_timeout_s,
            "request_timeout_s": settings.request_timeout_s,
            "retain_finished_s": settings.retain_finished_s,
            "journal_horizon_s": settings.journal_horizon(),
            "schedule": [str(k) for k in SCHEDULE],
        },
        "ok": all(c.ok for c in checks),
        "invariants": [asdict(c) for c in checks],
        "load_s": result.load_s,
        "operations": len(result.operations),
        "unexpected": sum(not o.ok for o in result.operations),
        "kinds": kinds_summary(result.operations, result.http),
        "statuses": result.http.by_status(),
        "server_errors_5xx": [asdict(e) for e in result.http.server_errors],
        "unexpected_operations": [asdict(o) for o in result.operations if not o.ok][:200],
        "kv": {
            "peak_usage_ratio": max(kv_load, default=None),
            "after": result.idle_after,
            "back_to_zero": bool(result.idle_after.get("idle")),
            "wait_s": result.idle_wait_s,
        },
        "rss": {
            **rss.to_json(),
            "first_mib": rss_values[0] / MIB if rss_values else None,
            "last_mib": rss_values[-1] / MIB if rss_values else None,
            "peak_mib": max(rss_values) / MIB if rss_values else None,
        },
        "journal": {
            **journal.to_json(),
            "data_dir": str(journal_dir) if journal_dir is not None else None,
            "first_bytes": journal_values[0] if journal_values else None,
            "last_bytes": journal_values[-1] if journal_values else None,
            "peak_bytes": max(journal_values) if journal_values else None,
        },
        "metrics_failures": result.metrics_failures[:50],
        "samples": [asdict(s) for s in result.samples],
        "output": str(output),
    }


def _cleanup(temporary: Path | None) -> None:
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
