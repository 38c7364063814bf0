"""The two kinds of client of ``plait bench serve-load``: a streaming chat completion and a two-call REST
workflow followed through its event stream, each timed (TTFT to the first content chunk, end-to-end, tokens)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

TOPICS = [
    "the sea",
    "a red fox",
    "autumn rain",
    "the moon",
    "coffee",
    "a quiet library",
    "mountains",
    "a city at night",
    "bread",
    "a lighthouse",
    "snow",
    "an old clock",
    "the desert",
    "a garden",
    "thunder",
    "a train station",
]
CHAT_TEMPLATES = [
    "Say one short sentence about {topic}.",
    "Give me a title for a poem about {topic}.",
    "What color do you think of for {topic}?",
    "Describe {topic} in a few words.",
    "Name one fact about {topic}.",
]
IDLE_TIMEOUT_S = 30.0


@dataclass
class ChatResult:
    ok: bool
    status: int = 0
    error: str = ""
    ttft_s: float | None = None
    e2e_s: float = 0.0
    completion_tokens: int = 0


@dataclass
class WorkflowResult:
    ok: bool
    status: int = 0
    error: str = ""
    state: str = ""
    first_token_s: float | None = None
    e2e_s: float = 0.0
    completion_tokens: int = 0


@dataclass
class LoadResult:
    wall_s: float
    chats: list[ChatResult] = field(default_factory=list)
    workflows: list[WorkflowResult] = field(default_factory=list)
    idle_after: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return [r.error or f"HTTP {r.status}" for r in [*self.chats, *self.workflows] if not r.ok]


def chat_body(index: int, max_tokens: int) -> dict[str, Any]:
    prompt = CHAT_TEMPLATES[index % len(CHAT_TEMPLATES)].format(topic=TOPICS[index % len(TOPICS)])
    return {
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def workflow_body(index: int, max_tokens: int) -> dict[str, Any]:
    """Two LLM calls: a draft about a topic, then a summary of the draft."""
    return {
        "workflow": {
            "name": f"load-{index}",
            "inputs": {"topic": TOPICS[index % len(TOPICS)]},
            "nodes": [
                {
                    "kind": "llm",
                    "id": "draft",
                    "prompt": "Write one short sentence about {{topic}}:",
                    "output": "draft",
                    "max_tokens": max_tokens,
                },
                {
                    "kind": "llm",
                    "id": "summary",
                    "prompt": "Summarize in three words: {{draft}}\nSummary:",
                    "output": "summary",
                    "max_tokens": max_tokens,
                },
            ],
            "outputs": ["draft", "summary"],
        }
    }


async def _sse_lines(response: Any) -> Any:
    """``(field, value)`` per SSE line; ``("", "")`` at the blank line that ends an event."""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if not line:
            yield "", ""
            continue
        name, _, value = line.partition(":")
        yield name, value.removeprefix(" ")


async def sse_json(response: Any) -> Any:
    """The JSON object of each ``data:`` line of an OpenAI-style stream, up to ``[DONE]``."""
    async for name, value in _sse_lines(response):
        if name != "data":
            continue
        if value == "[DONE]":
            return
        yield json.loads(value)


async def run_chat(client: Any, index: int, max_tokens: int) -> ChatResult:
    start = time.perf_counter()
    result = ChatResult(ok=False)
    try:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(index, max_tokens)) as response:
            result.status = response.status_code
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"chat {index}: HTTP {response.status_code}: {body[:200]}"
                return result
            done = False
            async for name, value in _sse_lines(response):
                if name != "data":
                    continue
                if value == "[DONE]":
                    done = True
                    break
                chunk = json.loads(value)
                if "error" in chunk:
                    result.error = f"chat {index}: stream error: {chunk['error']}"
                    return result
                for choice in chunk.get("choices") or []:
                    if result.ttft_s is None and (choice.get("delta") or {}).get("content"):
                        result.ttft_s = time.perf_counter() - start
                if chunk.get("usage"):
                    result.completion_tokens = int(chunk["usage"]["completion_tokens"])
        result.e2e_s = time.perf_counter() - start
        if not done:
            result.error = f"chat {index}: stream ended without [DONE]"
        elif result.completion_tokens < 1:
            result.error = f"chat {index}: no usage chunk or no tokens"
        else:
            result.ok = True
    except Exception as error:  # a transport failure is a failed request, not a crashed benchmark
        result.error = f"chat {index}: {type(error).__name__}: {error}"
    result.e2e_s = result.e2e_s or time.perf_counter() - start
    return result


async def run_workflow(client: Any, index: int, max_tokens: int) -> WorkflowResult:
    start = time.perf_counter()
    result = WorkflowResult(ok=False)
    try:
        response = await client.post("/v1/workflows", json=workflow_body(index, max_tokens))
        result.status = response.status_code
        if response.status_code != 201:
            result.error = f"workflow {index}: HTTP {response.status_code}: {response.text[:200]}"
            return result
        workflow_id = response.json()["id"]
        final = ""
        async with client.stream("GET", f"/v1/workflows/{workflow_id}/events") as events:
            if events.status_code != 200:
                result.error = f"workflow {index}: events HTTP {events.status_code}"
                return result
            kind = ""
            async for name, value in _sse_lines(events):
                if name == "event":
                    kind = value
                elif name == "" and kind:
                    if kind == "token" and result.first_token_s is None:
                        result.first_token_s = time.perf_counter() - start
                    if kind in ("done", "failed", "cancelled"):
                        final = kind
                        break
                    kind = ""
        result.e2e_s = time.perf_counter() - start
        status = (await client.get(f"/v1/workflows/{workflow_id}")).json()
        result.state = status.get("state", "")
        result.completion_tokens = sum(int(node.get("completion_tokens") or 0) for node in status.get("nodes", []))
        if final != "done" or result.state != "done":
            result.error = f"workflow {index}: ended {final or 'without a final event'}: {status.get('error')}"
        else:
            result.ok = True
    except Exception as error:
        result.error = f"workflow {index}: {type(error).__name__}: {error}"
    result.e2e_s = result.e2e_s or time.perf_counter() - start
    return result
