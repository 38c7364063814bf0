"""``plait generate``: a prompt or a chat message in, streamed text out.

stdout carries only the generated text; stderr shows the start-up (the model file and its size, the device and
dtype, the tokenizer and the prompt's length, then the weights loading, with a spinner on a terminal) and, at the end,
the time to the first token. The request is checked against everything known before the weights load (sampling
ranges, the engine settings, a decoding constraint's syntax, the prompt's tokens against the context window and
``max_tokens`` against the room it leaves): a bad one fails at once (status 2), not after the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.cli.engine_args import add_engine_arguments, checked_engine_config

if TYPE_CHECKING:
    from plait.engine import GenerateRequest
    from plait.engine.engine_config import EngineConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a prompt or chat messages (streamed)",
        description="Generate text with the embedded engine and stream it to stdout (start-up progress on stderr).",
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
    constraint = parser.add_argument_group("decoding constraints (at most one; enforced by grammar)")
    only_one = constraint.add_mutually_exclusive_group()
    only_one.add_argument("--json-schema", metavar="FILE", help="the output is JSON valid under this JSON Schema file")
    only_one.add_argument("--json-object", action="store_true", help="the output is a JSON object")
    only_one.add_argument("--regex", metavar="PATTERN", help="the output matches this regular expression")
    only_one.add_argument("--choices", nargs="+", metavar="CHOICE", help="the output is exactly one of these strings")
    only_one.add_argument("--ebnf", metavar="FILE", help="the output is derived from this grammar's `root` rule (EBNF)")
    parser.add_argument("--quiet", action="store_true", help="no start-up progress or timing on stderr")
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


def _constraint(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding constraint the flags ask for, as ``SamplingParams`` fields. Raises ``ValueError`` naming the flag
    for a file that cannot be read or a schema that is not JSON."""
    if args.json_schema is not None:
        text = _read(args.json_schema, "--json-schema")
        try:
            return {"json_schema": json.loads(text)}
        except json.JSONDecodeError as error:
            raise ValueError(f"--json-schema {args.json_schema}: not valid JSON: {error}") from None
    if args.ebnf is not None:
        return {"ebnf": _read(args.ebnf, "--ebnf")}
    if args.json_object:
        return {"json_object": True}
    if args.regex is not None:
        return {"regex": args.regex}
    if args.choices is not None:
        return {"choices": list(args.choices)}
    return {}


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{flag} {path}: cannot be read ({error})") from None


@dataclass
class _Checked:
    """What the request was checked against before any weight loads (shown as the start-up's first lines)."""

    model: str  # the file or directory, or the dummy shape
    size_bytes: int | None
    architecture: str
    layers: int
    device: str
    dtype: str
    vocab_size: int
    context_window: int
    prompt_tokens: int


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    started = time.perf_counter()
    console = Console(stderr=True, highlight=False, soft_wrap=True, quiet=args.quiet)
    with console.status("importing the engine (torch, xgrammar)"):
        from plait.engine import Engine, EngineError, GenerateRequest, InvalidRequestError, SamplingParams
    imported = time.perf_counter()
    config = checked_engine_config(args)
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
            **_constraint(args),
        )
        sampling.validate()
        request = GenerateRequest(
            prompt=args.prompt if args.prompt is not None else None, messages=_messages(args), sampling=sampling
        )
        checked = _check_before_loading(request, config)
    except (InvalidRequestError, ValueError) as error:  # (ValueError: a constraint file)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except EngineError as error:  # the model or its tokenizer cannot be found or read
        print(f"error: {error}", file=sys.stderr)
        return 1
    checked_at = time.perf_counter()
    size = f", {checked.size_bytes / 2**20:,.0f} MiB" if checked.size_bytes is not None else ""
    console.print(
        f"model: {checked.model}{size} ({checked.architecture}, {checked.layers} layers, context window "
        f"{checked.context_window:,} tokens) on {checked.device}, {checked.dtype}"
    )
    tokens = f"{checked.prompt_tokens:,} token{'s' if checked.prompt_tokens != 1 else ''}"
    console.print(f"tokenizer: a vocabulary of {checked.vocab_size:,} tokens; the prompt is {tokens}")
    console.print("loading the weights and starting the engine ...")
    loading = time.perf_counter()
    try:
        with console.status("loading the weights and starting the engine"):
            engine = Engine(config)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    ready = time.perf_counter()
    console.print(
        f"ready in {ready - started:.1f} s: imports {imported - started:.1f} s, checks {checked_at - imported:.1f} s, "
        f"weights and engine {ready - loading:.1f} s"
    )
    first_token: list[float] = []

    async def stream() -> None:
        async for delta in engine.generate(request):
            prefix = f"[{delta.index}] " if args.n > 1 else ""
            if delta.text:
                if not first_token:
                    first_token.append(time.perf_counter())
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
    if first_token:
        since_ready = first_token[0] - ready
        console.print(f"first token {first_token[0] - started:.2f} s after the start ({since_ready:.2f} s after ready)")
    return 0


def _check_before_loading(request: GenerateRequest, config: EngineConfig) -> _Checked:
    """Every check of ``EngineCore.prepare`` that needs no weights, on the model's header and tokenizer (both cheap
    to read): the prompt's tokens, the context window, the room ``max_tokens`` needs, the stop token ids."""
    from plait.engine.errors import InvalidRequestError
    from plait.engine.grammar import build_grammar
    from plait.engine.model_loader import resolve_model
    from plait.engine.prompt_tokens import request_prompt_ids
    from plait.engine.sampling_params import check_max_tokens_fit
    from plait.engine.tokenizer_loader import load_tokenizer

    source = resolve_model(config.model, config.weights)
    tokenizer = load_tokenizer(source, config.tokenizer)
    context_window = config.resolve_max_context(source.config.max_position)
    prompt_ids = request_prompt_ids(request, tokenizer, source.config.vocab_size)
    request.sampling.validate(tokenizer.vocab_size)
    build_grammar(request.sampling)  # a constraint that does not parse (a bad regex, schema or grammar) fails here
    if len(prompt_ids) >= context_window:
        raise InvalidRequestError(
            "prompt", f"{len(prompt_ids)} tokens do not fit the context window of {context_window} tokens"
        )
    check_max_tokens_fit(request.sampling.max_tokens, len(prompt_ids), context_window)
    device = config.resolve_device()
    path = source.path
    return _Checked(
        model=str(path) if path is not None else f"{config.model} (random weights)",
        size_bytes=_size(path),
        architecture=source.config.architecture,
        layers=source.config.num_layers,
        device=str(device),
        dtype=str(config.resolve_dtype(device)).removeprefix("torch."),
        vocab_size=tokenizer.vocab_size,
        context_window=context_window,
        prompt_tokens=len(prompt_ids),
    )


def _size(path: Any) -> int | None:
    if path is None:
        return None
    if path.is_dir():
        return sum(file.stat().st_size for file in path.glob("*.safetensors"))
    return path.stat().st_size
