"""What journaling costs: REST workflow throughput with the journal on and off, measured in one run on one server.

``python -m tests.durability.journal_overhead [--rounds 8] [--workflows 24] [--max-tokens 8] [--model default]
[--device cpu]`` (on a GPU: ``--device cuda --model llama-3.2-1b --weights dummy``, for example)

One in-process server (the ``plait serve`` application under uvicorn on 127.0.0.1, one engine) runs rounds of
``--workflows`` workflows submitted at once, alternating journal off and on (off, on, on, off, ...: each pair in both
orders, so that drift in the machine's speed cancels). A round's time is from its first workflow's creation to its
last one's end, as the server recorded them; its throughput is workflows per second. Each round's inputs are new, so
no round reuses another's prefix cache. Prints every round and the median on/off ratios of throughput and of CPU
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

import plait
from plait.engine import EngineConfig
from plait.server import ServerConfig, create_app
from plait.server.app import build_state
from plait.server.uvicorn_thread import UvicornThread
from plait.server.workflows.durability import attach_journal, open_journal


@plait.tool
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="rounds in all (an even number: half of them journaled)")
    parser.add_argument("--workflows", type=int, default=24, help="workflows per round, submitted at once")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per LLM call")
    parser.add_argument("--model", default="default", help="the engine's model (default: SmolLM2-135M)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--weights", default="auto", help="'dummy' for a shape name as --model (GPU runs)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    args = parser.parse_args()

    engine = EngineConfig(model=args.model, weights=args.weights, device=args.device, dtype=args.dtype)
    state = build_state(ServerConfig(), engine, [shout])
    runner = UvicornThread(create_app(state))
    url = runner.start()
    results: dict[bool, list[float]] = {False: [], True: []}
    cpu_per_workflow: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="plait-overhead-") as directory:
        journal = open_journal(state, Path(directory) / "journal.sqlite3")
        try:
            asyncio.run(run_round(url, -1, args.workflows, args.max_tokens))  # warm-up, not counted
            for round_index in range(args.rounds):
                journaled = round_index % 4 in (1, 2)  # off, on, on, off, ...
                attach_journal(state, journal if journaled else None)
                started, cpu_started = time.perf_counter(), time.process_time()
                throughput = asyncio.run(run_round(url, round_index, args.workflows, args.max_tokens))
                cpu = (time.process_time() - cpu_started) / args.workflows
                results[journaled].append(throughput)
                cpu_per_workflow[journaled].append(cpu)
                label = "on " if journaled else "off"
                print(f"round {round_index}: journal {label} {throughput:6.2f} workflows/s, {cpu * 1000:6.1f} CPU ms "
                      f"per workflow ({time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip
            counts = {**journal.counts(), "transactions": journal.transactions, "writes": journal.writes}
        finally:
            attach_journal(state, journal)
            runner.stop()
            state.engine.close()
            journal.close()
    off_cpu, on_cpu = statistics.median(cpu_per_workflow[False]), statistics.median(cpu_per_workflow[True])
    print(f"median CPU per workflow: journal off {off_cpu * 1000:.1f} ms, on {on_cpu * 1000:.1f} ms; "
          f"on/off = {on_cpu / off_cpu:.3f}")  # fmt: skip
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"median throughput: journal off {off:.2f}, on {on:.2f} workflows/s; on/off = {on / off:.3f} "
          f"({(1 - on / off) * 100:+.1f}% cost)")  # fmt: skip
    print(f"journal after the run: {counts}")


if __name__ == "__main__":
    main()
