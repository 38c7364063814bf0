"""``plait generate``: a prompt or a chat message in, streamed text out."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a prompt or chat messages (streamed)",
        description="Generate text with the embedded engine and stream it to stdout.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="raw prompt text (no chat template)")
    source.add_argument("--chat", metavar="MESSAGE", help="one user message, rendered with the model's chat template")
    source.add_argument(
        "--messages", metavar="JSON", help='chat messages as JSON: [{"role": "user", "content": "..."}]'
    )
    parser.add_argument("--system", help="system message to put before --chat")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("-n", type=int, default=1, help="number of samples")
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def _messages(args: argparse.Namespace) -> list[dict] | None:
    if args.messages:
        try:
            return json.loads(args.messages)
        except json.JSONDecodeError as error:
            raise SystemExit(f"--messages is not valid JSON: {error}") from None
    if args.chat is not None:
        system = [{"role": "system", "content": args.system}] if args.system else []
        return [*system, {"role": "user", "content": args.chat}]
    return None


def run(args: argparse.Namespace) -> int:
    from plait.engine import Engine, EngineError, GenerateRequest, SamplingParams

    try:
        sampling = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            seed=args.seed,
            stop=args.stop,
            n=args.n,
        )
        request = GenerateRequest(
            prompt=args.prompt if args.prompt is not None else None, messages=_messages(args), sampling=sampling
        )
        engine = Engine(engine_config_from_args(args))
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    async def stream() -> None:
        async for delta in engine.generate(request):
            prefix = f"[{delta.index}] " if args.n > 1 else ""
            if delta.text:
                sys.stdout.write(prefix + delta.text if args.n > 1 else delta.text)
                sys.stdout.flush()
            if delta.finish_reason:
                print(f"\n{prefix}[finish: {delta.finish_reason}, {delta.completion_tokens} tokens]", file=sys.stderr)

    try:
        asyncio.run(stream())
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    return 0
