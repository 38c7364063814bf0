"""What journaling costs (``plait bench journal``): REST workflow throughput with the journal on and off, measured in
one run on one server.

One in-process server (the ``plait serve`` application under uvicorn on 127.0.0.1, one engine) runs rounds of
``--workflows`` workflows submitted at once, alternating journal off and on (off, on, on, off, ...: each pair in both
orders, so that drift in the machine's speed cancels). A round's time is from its first workflow's creation to its
last one's end, as the server recorded them; its throughput is workflows per second. Each round's inputs are new, so
no round reuses another's prefix cache. Reports every round and the median on/off ratios of throughput and of CPU
seconds per workflow (this process's CPU time: the engine, the server, the journal's writer thread and the client;
steadier than wall time on a shared machine). The journal is on a temporary directory of the local disk (WAL,
synchronous=FULL).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "journal",
        help="what the durability journal costs: workflow throughput with it on and off, one server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=8, help="rounds in all (a multiple of 4: half journaled)")
    parser.add_argument("--workflows", type=int, default=24, help="workflows per round, submitted at once")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per LLM call")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def shout(text: str, idempotency_key: str) -> str:
    """A server tool (it receives its idempotency key, as a tool with side effects would)."""
    return text.upper()[:40]


def workflow(round_index: int, index: int, max_tokens: int) -> dict[str, Any]:
    """A fan-out with a tool: ask -> (shout, explain) -> join."""
    inputs = {"topic": f"subject {round_index}-{index}"}
    return {
        "workflow": {
            "name": "overhead",
            "inputs": inputs,
            "nodes": [
                {"kind": "llm", "id": "ask", "prompt": "Name {{topic}}:", "output": "answer",
                 "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True},
                {"kind": "tool", "id": "shout", "tool": "shout", "args": {"text": {"$var": "answer"}},
                 "output": "loud"},
                {"kind": "llm", "id": "explain", "prompt": "Why {{answer}}?", "output": "why",
                 "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True},
                {"kind": "llm", "id": "join", "prompt": "{{loud}} / {{why}}", "output": "final",
                 "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True},
            ],
        }
    }  # fmt: skip


async def run_round(url: str, round_index: int, workflows: int, max_tokens: int) -> float:
    """Workflows per second of one round (server-side times: first creation to last end)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        bodies = [workflow(round_index, index, max_tokens) for index in range(workflows)]
        created = await asyncio.gather(*(client.post("/v1/workflows", json=body) for body in bodies))
        ids = [response.json()["id"] for response in created]
        while True:  # one list page per poll: cheap for the server, so the measurement barely disturbs it
            page = (await client.get("/v1/workflows", params={"limit": 100})).json()["data"]
            if not any(item["state"] == "running" for item in page if item["id"] in ids):
                break
            await asyncio.sleep(0.2)
        statuses = [(await client.get(f"/v1/workflows/{workflow_id}")).json() for workflow_id in ids]
    assert all(status["state"] == "done" for status in statuses), [s["error"] for s in statuses]
    start = min(status["created_at"] for status in statuses)
    end = max(status["created_at"] + status["elapsed_s"] for status in statuses)
    return workflows / (end - start)


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from plait.bench.report import default_output, print_table, write_json
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from plait.server.uvicorn_thread import UvicornThread
    from plait.server.workflows.durability import attach_journal, open_journal

    if args.rounds < 4 or args.rounds % 4:
        print("error: --rounds must be a multiple of 4 (off, on, on, off, ...)", flush=True)
        return 2
    state = build_state(ServerConfig(), engine_config_from_args(args), [shout])
    runner = UvicornThread(create_app(state))
    url = runner.start()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="plait-journal-bench-") as directory:
        journal = open_journal(state, Path(directory) / "journal.sqlite3")
        try:
            asyncio.run(run_round(url, -1, args.workflows, args.max_tokens))  # warm-up, not counted
            with Progress(transient=True) as progress:
                task = progress.add_task("rounds", total=args.rounds)
                for round_index in range(args.rounds):
                    journaled = round_index % 4 in (1, 2)  # off, on, on, off, ...
                    attach_journal(state, journal if journaled else None)
                    cpu_started = time.process_time()
                    throughput = asyncio.run(run_round(url, round_index, args.workflows, args.max_tokens))
                    cpu_ms = (time.process_time() - cpu_started) / args.workflows * 1000
                    rounds.append({"round": round_index, "journal": journaled, "workflows_per_s": throughput,
                                   "cpu_ms_per_workflow": cpu_ms})  # fmt: skip
                    progress.advance(task)
            counts = {**journal.counts(), "transactions": journal.transactions, "writes": journal.writes}
        finally:
            attach_journal(state, journal)
            runner.stop()
            state.engine.close()
            journal.close()
    medians = {
        on: {
            key: statistics.median(r[key] for r in rounds if r["journal"] is on)
            for key in ("workflows_per_s", "cpu_ms_per_workflow")
        }
        for on in (False, True)
    }
    ratios = {
        "throughput_on_off": medians[True]["workflows_per_s"] / medians[False]["workflows_per_s"],
        "cpu_on_off": medians[True]["cpu_ms_per_workflow"] / medians[False]["cpu_ms_per_workflow"],
    }
    rows = [[r["round"], "on" if r["journal"] else "off", f"{r['workflows_per_s']:.2f}",
             f"{r['cpu_ms_per_workflow']:.1f}"] for r in rounds]  # fmt: skip
    rows.append(["median", "on/off", f"{ratios['throughput_on_off']:.3f}x", f"{ratios['cpu_on_off']:.3f}x"])
    print_table("journal cost", ["round", "journal", "workflows/s", "CPU ms per workflow"], rows)
    print(f"journal after the run: {counts}")
    output = args.output or default_output("journal")
    payload = {"bench": "journal", "settings": {k: getattr(args, k) for k in ("rounds", "workflows", "max_tokens")},
               "rounds": rounds, "medians": {"off": medians[False], "on": medians[True]}, "ratios": ratios,
               "journal": counts}  # fmt: skip
    print(f"wrote {write_json(output, payload)}")
    return 0
