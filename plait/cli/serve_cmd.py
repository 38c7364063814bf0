"""``plait serve``: the HTTP server (REST workflows, the OpenAI-compatible API, metrics) on the embedded engine."""

from __future__ import annotations

import argparse
import sys

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args

DESCRIPTION = """\
Serve agent programs over HTTP: submit JSON workflows (POST /v1/workflows) and stream their events, run Python
programs remotely with plait.Client, or call the OpenAI-compatible API (/v1/chat/completions, /v1/completions)
with an optional program_id. Health: /health, /ready; Prometheus metrics: /metrics; API docs: /docs.

Settings come from --config (JSON or TOML: host, port, api_keys, limits, tenant_limits, max_nodes_per_workflow,
max_body_bytes, tools, client_tool_timeout_s, ...), then the PLAIT_API_KEYS environment variable
("key1=tenant-a,key2=tenant-b"), then the flags below. Without API keys every caller is the tenant "default".
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
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's"
    )
    add_engine_arguments(parser)
    parser.set_defaults(handler=serve)


def load_config(args: argparse.Namespace):  # -> ServerConfig
    """The settings from the file, the environment and the flags; ``ValueError`` naming the bad setting."""
    from plait.server.config import ServerConfig, parse_api_keys

    try:
        config = ServerConfig.load(args.config, host=args.host, port=args.port)
        if args.api_keys:
            config.api_keys.update(parse_api_keys(args.api_keys))
        config.tools = [*config.tools, *args.tools]
        config.validate()
    except TypeError as error:  # a setting of the wrong type (for example a string where a number belongs)
        raise ValueError(f"config: a setting has the wrong type: {error}") from None
    return config


def serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import uvicorn

    from plait.engine import EngineError
    from plait.server import create_app
    from plait.server.app import build_state

    try:
        state = build_state(config, engine_config_from_args(args))
    except (ValueError, TypeError) as error:  # a tool that cannot be loaded or is not a valid tool
        print(f"error: tools: {error}", file=sys.stderr)
        return 2
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    app = create_app(state)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level)
    finally:
        if state.owns_engine:
            state.engine.close()
    return 0
