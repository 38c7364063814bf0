"""The workloads of ``plait bench peer``, run against any OpenAI-compatible server by one client (httpx): the same
requests, the same timing and the same token count for every server.

- ``single``: one streamed chat completion at a time; decode tokens/s of each = (tokens - 1) / (last - first token).
- ``concurrent``: ``streams`` streamed completions at once; tokens/s = all tokens / wall time of the wave.
- ``agent``: ``sessions`` agent sessions at once, each ``turns`` calls; every call carries the shared system prompt,
  the session's history, and a tool result that arrives ``tool_s`` after the previous reply. Mean session time.

Tokens are counted by encoding the streamed text with the model's own tokenizer (``count_tokens``), so no server's
own usage accounting (or lack of it) enters the comparison. Every pass sends prompts of its own (``tag``): a server
that answers a repeated greedy request from a cache of results would otherwise be timed on the cache.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from plait.bench.serve_load_clients import TOPICS, sse_json

STORY_PROMPTS = [
    "Write a long, detailed story about {topic}. Describe every scene.",
    "Explain, step by step and at length, everything a child should know about {topic}.",
    "Write a long letter to a friend describing {topic} in great detail.",
    "Write an essay of several paragraphs about {topic}.",
]
AGENT_RULES = [
    "Read the task and the tool results carefully before you answer.",
    "Call at most one tool per turn and say which one you call and why.",
    "Keep a short plan and update it after every tool result.",
    "Never invent file contents; read them with the read tool first.",
    "When a command fails, read its error, fix the cause and run it again.",
    "Prefer small, reversible edits and check each one with the tests.",
    "Report what changed and what is left when the task is done.",
    "Quote the exact lines you change and the file they belong to.",
]
TOOL_RESULTS = [
    "The command exited with status 1: tests/test_{topic}.py::test_case failed with an AssertionError on line 42.",
    "The file src/{topic}.py has 120 lines; the function handle() returns None when the input list is empty.",
    "The search found three matches for '{topic}' in the repository: two in the docs and one in the config.",
    "The command exited with status 0 and printed: 18 passed, 2 skipped in 3.1 s.",
]


def agent_system_prompt(target_tokens: int, count_tokens: Callable[[str], int], tag: str = "") -> str:
    """A tool-using agent's instructions, numbered rules repeated until the text holds ``target_tokens`` tokens."""
    label = f" ({tag})" if tag else ""
    lines = [
        f"You are a careful software agent{label} working in a repository through tools (read, edit, run, search)."
    ]
    index = 0
    while count_tokens("\n".join(lines)) < target_tokens:
        lines.append(f"Rule {index + 1}: {AGENT_RULES[index % len(AGENT_RULES)]}")
        index += 1
    return "\n".join(lines)


@dataclass
class StreamResult:
    """One streamed completion: when it was sent, its first and last content chunk, its text."""

    ok: bool
    sent: float
    first: float | None = None
    last: float | None = None
    text: str = ""
    error: str = ""

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.sent


@dataclass
class WorkloadResult:
    """What one pass of one workload measured on one server."""

    workload: str
    value: float  # decode tok/s (single), tok/s (concurrent), mean session s (agent)
    unit: str
    requests: int
    failed: int
    tokens: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chat:
    """One server's chat endpoint: ``client`` (its base URL), the model name it serves, and fields added to every
    request (``extras``): how that server is told to generate exactly ``max_tokens``."""

    client: httpx.AsyncClient
    model: str
    extras: dict[str, Any] = field(default_factory=dict)

    async def __call__(self, messages: list[dict[str, str]], max_tokens: int) -> StreamResult:
        return await stream_chat(self.client, self.model, messages, max_tokens, self.extras)


async def stream_chat(
    client: httpx.AsyncClient,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    extras: dict[str, Any] | None = None,
) -> StreamResult:
    """POST one streamed chat completion (temperature 0, plus ``extras``) and time its content chunks."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    body |= extras or {}
    result = StreamResult(ok=False, sent=time.perf_counter())
    pieces: list[str] = []
    finished = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
                return result
            async for chunk in sse_json(response):
                for choice in chunk.get("choices") or []:
                    finished = finished or bool(choice.get("finish_reason"))
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter()
                        result.first = result.first if result.first is not None else now
                        result.last = now
                        pieces.append(content)
    except (httpx.HTTPError, json.JSONDecodeError) as error:
        result.error = f"{type(error).__name__}: {error}"
        return result
    result.text = "".join(pieces)
    result.ok = result.first is not None and finished
    if not result.ok:
        result.error = "the stream ended without a finish reason" if pieces else "the stream carried no content"
    return result


def _story(index: int, tag: str) -> str:
    topic = TOPICS[index % len(TOPICS)]
    label = f"[{tag}, request {index}] " if tag else ""
    return label + STORY_PROMPTS[index % len(STORY_PROMPTS)].format(topic=topic)


async def run_single(
    chat: Chat,
    count_tokens: Callable[[str], int],
    requests: int,
    max_tokens: int,
    tag: str = "",
) -> WorkloadResult:
    """``requests`` completions one after another: the median decode tokens/s of one stream."""
    rates, tokens, failed = [], 0, 0
    errors: list[str] = []
    for index in range(requests):
        prompt = _story(index, tag)
        result = await chat([{"role": "user", "content": prompt}], max_tokens)
        errors.append(result.error)
        n = count_tokens(result.text) if result.ok else 0
        if not result.ok or n < 2 or result.last == result.first:
            failed += 1
            continue
        tokens += n
        rates.append((n - 1) / (result.last - result.first))
    rates.sort()
    median = rates[len(rates) // 2] if rates else 0.0
    details = {"rates": rates, "errors": sorted(set(e for e in errors if e))[:3]}
    return WorkloadResult("single", median, "decode tok/s", requests, failed, tokens, details)


async def run_concurrent(
    chat: Chat,
    count_tokens: Callable[[str], int],
    streams: int,
    max_tokens: int,
    tag: str = "",
) -> WorkloadResult:
    """``streams`` completions sent at once: all their tokens over the wave's wall time."""
    start = time.perf_counter()
    results = await asyncio.gather(
        *(chat([{"role": "user", "content": _story(i, tag)}], max_tokens) for i in range(streams))
    )
    wall = time.perf_counter() - start
    tokens = sum(count_tokens(r.text) for r in results if r.ok)
    ttfts = sorted(r.ttft_s for r in results if r.ttft_s is not None)
    details = {"wall_s": wall, "median_ttft_s": ttfts[len(ttfts) // 2] if ttfts else None}
    details["errors"] = sorted({r.error for r in results if r.error})[:3]
    failed = sum(not r.ok for r in results)
    return WorkloadResult("concurrent", tokens / wall, "tok/s", streams, failed, tokens, details)


async def _agent_session(
    chat: Chat, system: str, session: int, turns: int, max_tokens: int, tool_s: float
) -> tuple[float, int, list[StreamResult]]:
    """One session: ``turns`` calls, each after a tool result; its wall time, its failures and its replies."""
    topic = TOPICS[session % len(TOPICS)]
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Task {session}: fix the failing test about {topic} in this repository."},
    ]
    start = time.perf_counter()
    failed = 0
    replies = []
    for turn in range(turns):
        reply = await chat(messages, max_tokens)
        replies.append(reply)
        if not reply.ok:
            failed += 1
        messages.append({"role": "assistant", "content": reply.text})
        if turn + 1 < turns:
            await asyncio.sleep(tool_s)  # the tool runs
            result = TOOL_RESULTS[(session + turn) % len(TOOL_RESULTS)].format(topic=topic.replace(" ", "_"))
            messages.append({"role": "user", "content": f"Tool result: {result}"})
    return time.perf_counter() - start, failed, replies


async def run_agent(
    chat: Chat,
    count_tokens: Callable[[str], int],
    sessions: int,
    turns: int,
    max_tokens: int,
    tool_s: float,
    system_tokens: int,
    tag: str = "",
) -> WorkloadResult:
    """``sessions`` agent sessions at once: the mean session time."""
    system = agent_system_prompt(system_tokens, count_tokens, tag)
    outcomes = await asyncio.gather(
        *(_agent_session(chat, system, s, turns, max_tokens, tool_s) for s in range(sessions))
    )
    times = [t for t, _, _ in outcomes]
    replies = [r for _, _, rs in outcomes for r in rs]
    ttfts = sorted(r.ttft_s for r in replies if r.ttft_s is not None)
    details = {
        "session_s": times,
        "median_ttft_s": ttfts[len(ttfts) // 2] if ttfts else None,
        "system_prompt_tokens": count_tokens(system),
        "tool_s": tool_s,
        "errors": sorted({r.error for r in replies if r.error})[:3],
    }
    tokens = sum(count_tokens(r.text) for r in replies if r.ok)
    failed = sum(f for _, f, _ in outcomes)
    return WorkloadResult("agent", sum(times) / len(times), "mean session s", len(replies), failed, tokens, details)
