"""``plait bench serve-load``: a real server under load: concurrent streaming chats plus workflows, all at once.

Starts ``plait serve`` in this process (uvicorn on 127.0.0.1, a free port; tenant limits raised to fit the load) or
hits ``--target URL``, then fires ``--chats`` streaming ``/v1/chat/completions`` requests (``stream_options.
include_usage``, short varied prompts) and ``--workflows`` REST workflows (two LLM calls, the first feeding the
second; followed through their event streams) at the same moment. Measures per-request TTFT (to the first content
chunk), end-to-end time and tokens; every request must succeed (a 429 counts as an error). Afterwards the engine must
be idle: no running or waiting request, no KV slot held by a request (``/metrics``; the engine's own counters too
when the server runs in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from plait.bench.serve_load_clients import (
    IDLE_TIMEOUT_S,
    ChatResult,
    LoadResult,
    WorkflowResult,
    run_chat,
    run_workflow,
)
from plait.cli.engine_args import add_engine_arguments, engine_config_from_args


def parse_metrics(text: str) -> dict[str, float]:
    """The unlabelled samples of a Prometheus exposition: ``{"plait_kv_usage_ratio": 0.0, ...}``."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*) (\S+)", line.strip())
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


async def wait_idle(client: Any, state: Any = None, timeout_s: float = IDLE_TIMEOUT_S) -> dict[str, Any]:
    """Poll until the engine runs nothing and holds no KV for requests; what was seen last."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = parse_metrics((await client.get("/metrics")).text)
        seen: dict[str, Any] = {
            "kv_usage_ratio": metrics.get("plait_kv_usage_ratio"),
            "running": metrics.get("plait_running_requests"),
            "waiting": metrics.get("plait_queue_depth"),
        }
        if state is not None:
            stats = state.engine.stats()
            if stats.running or stats.waiting or stats.kv_slots_used:
                stats = state.engine.core.stats()  # stats() is refreshed after steps only; nothing else submits now
            seen.update(
                kv_slots_used=stats.kv_slots_used,
                kv_slots_total=stats.kv_slots_total,
                kv_slots_cached=stats.kv_slots_cached,
                running=stats.running,
                waiting=stats.waiting,
                tenant_usage=state.usage.snapshot(),
            )
        seen["idle"] = (
            seen["kv_usage_ratio"] == 0.0
            and seen["running"] == 0
            and seen["waiting"] == 0
            and seen.get("kv_slots_used", 0) == 0
            and all(v == (0, 0) for v in seen.get("tenant_usage", {}).values())
        )
        if seen["idle"] or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def run_load(
    base_url: str,
    *,
    chats: int,
    workflows: int,
    max_tokens: int,
    api_key: str | None = None,
    state: Any = None,
    on_done: Callable[[str], None] | None = None,
    timeout_s: float = 600.0,
) -> LoadResult:
    """Fire ``chats`` streaming chats and ``workflows`` workflows at once; wait for all, then for an idle engine."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=chats + 2 * workflows + 8)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=httpx.Timeout(timeout_s, connect=60.0)
    ) as client:

        async def tracked(kind: str, coroutine: Any) -> Any:
            outcome = await coroutine
            if on_done is not None:
                on_done(kind)
            return outcome

        start = time.perf_counter()
        chat_tasks = [tracked("chat", run_chat(client, i, max_tokens)) for i in range(chats)]
        workflow_tasks = [tracked("workflow", run_workflow(client, i, max_tokens)) for i in range(workflows)]
        # Interleave so that chats and workflows reach the server together.
        order = [t for pair in zip(chat_tasks, workflow_tasks, strict=False) for t in pair]
        order += chat_tasks[len(workflow_tasks) :] + workflow_tasks[len(chat_tasks) :]
        outcomes = await asyncio.gather(*order)
        wall_s = time.perf_counter() - start
        result = LoadResult(
            wall_s=wall_s,
            chats=[o for o in outcomes if isinstance(o, ChatResult)],
            workflows=[o for o in outcomes if isinstance(o, WorkflowResult)],
        )
        result.idle_after = await wait_idle(client, state)
    return result


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(result: LoadResult) -> dict[str, Any]:
    ok_chats = [r for r in result.chats if r.ok]
    ok_workflows = [r for r in result.workflows if r.ok]
    ttft = [r.ttft_s for r in ok_chats if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok_chats]
    wf_e2e = [r.e2e_s for r in ok_workflows]
    wf_first = [r.first_token_s for r in ok_workflows if r.first_token_s is not None]
    chat_tokens = sum(r.completion_tokens for r in result.chats)
    workflow_tokens = sum(r.completion_tokens for r in result.workflows)
    statuses: dict[str, int] = {}
    for r in [*result.chats, *result.workflows]:
        if not r.ok:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    return {
        "wall_s": result.wall_s,
        "chats": {
            "requests": len(result.chats),
            "errors": len(result.chats) - len(ok_chats),
            "ttft_p50_s": percentile(ttft, 50),
            "ttft_p99_s": percentile(ttft, 99),
            "ttft_max_s": max(ttft, default=None),
            "without_content": len(ok_chats) - len(ttft),
            "e2e_p50_s": percentile(e2e, 50),
            "e2e_p99_s": percentile(e2e, 99),
            "completion_tokens": chat_tokens,
        },
        "workflows": {
            "requests": len(result.workflows),
            "errors": len(result.workflows) - len(ok_workflows),
            "first_token_p50_s": percentile(wf_first, 50),
            "first_token_p99_s": percentile(wf_first, 99),
            "completion_p50_s": percentile(wf_e2e, 50),
            "completion_p99_s": percentile(wf_e2e, 99),
            "completion_tokens": workflow_tokens,
        },
        "errors": len(result.errors),
        "errors_by_status": statuses,
        "error_samples": result.errors[:20],
        "throughput_tok_s": (chat_tokens + workflow_tokens) / result.wall_s if result.wall_s > 0 else 0.0,
        "idle_after": {k: (dict(v) if isinstance(v, dict) else v) for k, v in result.idle_after.items()},
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve-load",
        help="server under load: concurrent streaming chats + workflows; TTFT, errors, KV freed afterwards",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--chats", type=int, default=200, help="concurrent streaming chat completions")
    parser.add_argument("--workflows", type=int, default=50, help="concurrent workflows (two chained LLM calls)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of every chat and LLM node")
    parser.add_argument(
        "--target", default=None, metavar="URL", help="an already running server (default: start one in-process)"
    )
    parser.add_argument("--api-key", default=None, help="bearer key for --target")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON path (default plait-results/<device>_<date>/serve_load_...)"
    )
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def default_output(model_id: str) -> Path:
    """``plait-results/<device>_<date>/serve_load_<model>.json`` under the working directory."""
    import torch

    from plait.bench.report import RESULTS_DIR

    device = "cpu"
    if torch.cuda.is_available():
        match = re.search(r"[a-z]\d{2,4}", torch.cuda.get_device_name(0).lower())
        device = match.group(0) if match else "gpu"
    model = re.split(r"[^a-z0-9]+", model_id.lower())[0] or "model"
    return RESULTS_DIR / f"{device}_{dt.date.today().isoformat()}" / f"serve_load_{model}.json"


def start_server(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """An in-process server sized for the load; ``(runner, state, base_url)``."""
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from plait.server.config import TenantLimits
    from plait.server.uvicorn_thread import UvicornThread

    programs = args.chats + args.workflows
    limits = TenantLimits(
        max_concurrent_programs=max(64, 2 * programs),
        max_queued_tokens=max(262_144, 4 * programs * (args.max_tokens + 512)),
    )
    config = ServerConfig(host="127.0.0.1", port=0, limits=limits, shutdown_grace_s=5.0)
    config.validate()
    state = build_state(config, engine_config_from_args(args))
    runner = UvicornThread(create_app(state))
    try:
        base_url = runner.start()
    except BaseException:
        state.engine.close()
        raise
    return runner, state, base_url


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from plait.bench.report import print_table, write_json

    console = Console()
    runner = state = None
    if args.target:
        base_url = args.target.rstrip("/")
    else:
        console.print("starting the server in-process ...")
        runner, state, base_url = start_server(args)
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        models = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=60).json()
        model_id = models["data"][0]["id"]
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=args.no_progress,
        ) as progress:
            chats = progress.add_task("chats", total=args.chats)
            workflows = progress.add_task("workflows", total=args.workflows)

            def on_done(kind: str) -> None:
                progress.advance(chats if kind == "chat" else workflows)

            result = asyncio.run(
                run_load(
                    base_url,
                    chats=args.chats,
                    workflows=args.workflows,
                    max_tokens=args.max_tokens,
                    api_key=args.api_key,
                    state=state,
                    on_done=on_done,
                    timeout_s=args.timeout,
                )
            )
    finally:
        if runner is not None:
            runner.stop()
            if state.owns_engine:
                state.engine.close()
    summary = summarize(result)
    idle = summary["idle_after"]
    kv_after = idle.get("kv_slots_used", idle.get("kv_usage_ratio"))

    def fmt_s(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

    c, w = summary["chats"], summary["workflows"]
    print_table(
        f"serve-load: {args.chats} streaming chats + {args.workflows} workflows, max_tokens {args.max_tokens}",
        ["kind", "requests", "errors", "TTFT p50", "TTFT p99", "e2e p50", "e2e p99", "tokens"],
        [
            [
                "chat",
                c["requests"],
                c["errors"],
                fmt_s(c["ttft_p50_s"]),
                fmt_s(c["ttft_p99_s"]),
                fmt_s(c["e2e_p50_s"]),
                fmt_s(c["e2e_p99_s"]),
                c["completion_tokens"],
            ],
            [
                "workflow",
                w["requests"],
                w["errors"],
                fmt_s(w["first_token_p50_s"]),
                fmt_s(w["first_token_p99_s"]),
                fmt_s(w["completion_p50_s"]),
                fmt_s(w["completion_p99_s"]),
                w["completion_tokens"],
            ],
        ],
    )
    console.print(
        f"wall {summary['wall_s']:.1f} s, throughput {summary['throughput_tok_s']:.1f} tok/s, "
        f"KV used after: {kv_after}, running after: {idle.get('running')}, idle: {idle.get('idle')}"
    )
    for sample in summary["error_samples"][:5]:
        console.print(f"[red]error[/red] {sample}")
    payload = {
        "bench": "serve-load",
        "model": model_id,
        "server": args.target or "in-process (uvicorn 127.0.0.1, tenant limits raised for the load)",
        "params": {"chats": args.chats, "workflows": args.workflows, "max_tokens": args.max_tokens},
        **summary,
        "requests": {
            "chats": [asdict(r) for r in result.chats],
            "workflows": [asdict(r) for r in result.workflows],
        },
    }
    path = write_json(args.output or default_output(model_id), payload)
    console.print(f"wrote {path}")
    return 0 if summary["errors"] == 0 and idle.get("idle") else 1
