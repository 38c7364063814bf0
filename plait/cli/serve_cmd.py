"""``plait serve``: the HTTP server (REST workflows, the OpenAI-compatible API, metrics) on the embedded engine."""

from __future__ import annotations

import argparse
import socket
import sys
import time
import traceback
from typing import Any

from plait.cli.engine_args import add_engine_arguments, add_plan_argument, engine_config_from_args, plan_from_args

DESCRIPTION = """\
Serve agent programs over HTTP: submit JSON workflows (POST /v1/workflows) and stream their events, run Python
programs remotely with plait.Client, or call the OpenAI-compatible API (/v1/chat/completions, /v1/completions)
with an optional program_id. Health: /health, /ready; Prometheus metrics: /metrics; API docs: /docs.

Settings come from --config (JSON or TOML: host, port, api_keys, limits, tenant_limits, max_nodes_per_workflow,
max_body_bytes, tools, shutdown_grace_s, ...; examples/server.toml lists every one with its default), then the
PLAIT_API_KEYS environment variable ("key1=tenant-a,key2=tenant-b": KEY=TENANT pairs), then the flags below.
Without API keys every caller is the tenant "default".

The server listens at once and loads the model in the background, printing each step with its time: /health
answers 200 from the start, /ready and the API 503 ("starting", with Retry-After) until the model is loaded. A model
or tool that fails to load ends the process (exit 1, or 2 for a tool, a bad --plan or a journal it cannot use).
SIGTERM or Ctrl-C drains: new work gets 503, running work gets shutdown_grace_s, the rest is stopped (with the
journal, REST workflows are suspended: their event streams end with a `suspended` event and they resume when the
server starts again; without it, they are cancelled), then the process exits; a second signal stops at once.

Durability: accepted workflows and every finished step's output are journaled (SQLite) in --data-dir before
anything depends on them; after a crash or a restart the server resumes every accepted, unfinished workflow (finished
steps are replayed from the journal, never run again; a step that was running runs again; tools get an idempotency
key) and keeps workflow ids valid. Finished workflows are deleted from the journal after --retain-finished-s.
--no-journal turns this off (nothing survives the process).

--plan chooses what the planner and the engine do (the start-up log prints one line per enabled feature, and
GET /server_info the effective settings): plait's features by default, `--plan baseline` a request-level engine
(FCFS, LRU, no pins, no aging) from the same binary, to measure the served product against it.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP server (workflows, OpenAI-compatible API, metrics)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 8000; 0 picks a free one)")
    parser.add_argument("--config", default=None, metavar="FILE", help="server settings, a .json or .toml file")
    parser.add_argument(
        "--tools",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="server-side tools: a module (or .py file) and an attribute holding a tool, a function or a list of "
        "them; repeatable, added to the config file's tools",
    )
    parser.add_argument(
        "--api-keys",
        default=None,
        metavar="KEY=TENANT,...",
        help="API keys and their tenants (added to the config file's and PLAIT_API_KEYS')",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="PATH",
        help="where the journal of durable workflows lives (default plait-data, created if missing)",
    )
    parser.add_argument(
        "--no-journal",
        dest="journal",
        action="store_false",
        default=None,
        help="run without a journal: workflows in flight are lost when the server stops",
    )
    parser.add_argument(
        "--retain-finished-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long finished workflows stay in the journal (default 604800, a week)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's"
    )
    add_plan_argument(parser, served=True)
    add_engine_arguments(parser)
    scale = parser.add_argument_group("scale-out")
    scale.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="engine replicas behind one planner and API (default 1: one engine in this process)",
    )
    scale.add_argument(
        "--routing",
        default="program",
        metavar="POLICY",
        help="where each call goes: program (the replica holding its program's KV, else the longest cached prefix "
        "under a load guard; the default), prefix (always the longest cached prefix), round-robin",
    )
    scale.add_argument(
        "--replica-backend",
        default="ray",
        metavar="ray|local",
        help="ray: one Ray actor per replica (pip install 'plait[scale]'); local: engines in this process",
    )
    scale.add_argument(
        "--ray-address", default=None, help="join this Ray cluster (default: start a local Ray, stopped at exit)"
    )
    parser.set_defaults(handler=serve)


def engine_source_from_args(args: argparse.Namespace) -> Any:
    """The engine settings; with ``--replicas`` above 1 (or a Ray address), replicas of them (``ReplicatedEngine``)."""
    engine = engine_config_from_args(args)
    if args.replicas == 1 and args.ray_address is None:
        return engine
    from plait.runtime.replicas import ReplicaConfig, ReplicatedEngine

    replicas = ReplicaConfig(
        replicas=args.replicas, routing=args.routing, backend=args.replica_backend, ray_address=args.ray_address
    )
    replicas.validate()
    return ReplicatedEngine(engine, replicas)


def load_config(args: argparse.Namespace):  # -> ServerConfig
    """The settings from the file, the environment and the flags; ``ValueError`` naming the bad setting."""
    from plait.server.config import ServerConfig, parse_api_keys

    try:
        config = ServerConfig.load(
            args.config,
            host=args.host,
            port=args.port,
            journal=args.journal,
            data_dir=args.data_dir,
            retain_finished_s=args.retain_finished_s,
        )
        if args.api_keys:
            config.api_keys.update(parse_api_keys(args.api_keys))
        config.tools = [*config.tools, *args.tools]
        config.validate()
    except TypeError as error:  # a setting of the wrong type (for example a string where a number belongs)
        raise ValueError(f"config: a setting has the wrong type: {error}") from None
    return config


def serve(args: argparse.Namespace) -> int:
    """Listen first (so health checks get answers, not "connection refused"), then import the server and load the
    model in the background; exit non-zero with the error printed when loading fails."""
    started = time.perf_counter()
    try:
        config = load_config(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log = StartupLog(started)
    try:
        sock = listen(config.host, config.port)
    except OSError as error:
        print(f"error: cannot listen on {config.host}:{config.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    try:
        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{host}:{sock.getsockname()[1]}"
        log(f"running on {url}: /health answers now, /ready once the model is loaded; API docs at {url}/docs")
        log(tenants_line(config))
        return _serve_on(sock, args, config, log)
    except KeyboardInterrupt:  # before the server handles signals (while importing)
        return 130
    finally:
        sock.close()


def _serve_on(sock: socket.socket, args: argparse.Namespace, config: Any, log: StartupLog) -> int:
    from plait.server.app import StartupError, api_routers, create_app, load_engine
    from plait.server.draining_server import DrainingServer, uvicorn_config
    from plait.server.state import ServerState
    from plait.server.workflows.resume_on_start import ResumeOnStart

    state = ServerState(config)

    def load() -> Any:  # in a background thread, while the server answers /health
        started = time.perf_counter()
        api_routers()
        log(f"imported the API and the engine (torch) in {time.perf_counter() - started:.1f} s")
        try:
            plan = plan_from_args(args)
        except ValueError as error:
            raise StartupError("plan", error) from error
        _open_journal(state, log)
        try:
            source = engine_source_from_args(args)
        except ValueError as error:
            raise StartupError("model", error) from error
        loaded = load_engine(config, source, plan=plan, report=log)
        log(f"ready in {time.perf_counter() - log.started:.1f} s")
        return loaded

    app = create_app(state, load=load)
    server = DrainingServer(uvicorn_config(ResumeOnStart(app, state), log_level=args.log_level), state, report=log)
    try:
        server.run(sockets=[sock])
    finally:
        _close_journal(state)
    error = state.startup_error
    if error is None:
        return 0
    if not isinstance(error, StartupError):
        print("error: loading the engine failed:", file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)
        return 1
    print(f"error: {error}", file=sys.stderr)
    if error.stage == "model":
        from plait.engine import EngineError  # imported already: the engine was loading

        if not isinstance(error.cause, EngineError | ValueError | TypeError | OSError):  # a bug, not a setting
            traceback.print_exception(error.cause, file=sys.stderr)
    return 2 if error.stage in ("tools", "plan", "journal") else 1


def _open_journal(state: Any, log: StartupLog) -> None:
    """Open the journal the settings ask for (in the loading thread: it imports the runtime); its workflows resume
    once the engine is attached (``ResumeOnStart``). A journal that cannot be used stops the server (exit 2)."""
    from plait.server.app import StartupError

    if not state.config.journal:
        log("journal: off (--no-journal): workflows in flight are lost when the server stops")
        return
    from plait.runtime.journal import JournalError
    from plait.server.workflows.durability import WORKFLOW_KIND, open_journal

    try:
        journal = open_journal(state)
    except JournalError as error:
        raise StartupError("journal", error) from error
    unfinished = len(journal.unfinished(WORKFLOW_KIND))
    log(f"journal: {journal.path} ({unfinished} unfinished workflow(s) resume once the model is loaded)")


def _close_journal(state: Any) -> None:
    if state.config.journal and "journal" in state.extras:
        from plait.server.workflows.durability import journal_of

        journal = journal_of(state)
        if journal is not None:
            journal.close()


class StartupLog:
    """Start-up progress on stderr, each line with the seconds since ``plait serve`` started."""

    def __init__(self, started: float) -> None:
        self.started = started

    def __call__(self, message: str) -> None:
        print(f"plait serve [{time.perf_counter() - self.started:5.1f} s] {message}", file=sys.stderr, flush=True)


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (what uvicorn would bind, bound before anything slow is imported)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def tenants_line(config: Any) -> str:
    if not config.auth_enabled:
        loopback = config.host in ("127.0.0.1", "localhost", "::1")
        note = "" if loopback else f"; anyone who reaches {config.host} may use the server"
        return f'tenants: no API keys, every caller is the tenant "default"{note}'
    tenants = sorted(set(config.api_keys.values()))
    return f"tenants: {', '.join(tenants)} ({len(config.api_keys)} API key(s))"
