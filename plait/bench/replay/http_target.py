"""Replaying against any OpenAI-compatible server (``--target URL``): streaming ``/v1/completions``.

Prompts go as token ids (request-level traces; valid for any vocabulary of 32k tokens or more, see
``prompt_synthesis``) or as text (agent sessions). Output lengths are forced with ``ignore_eos`` (an extension plait,
vLLM and SGLang accept); a server that refuses the field is asked again without it, once, and the run notes that
output lengths were not forced. An agent session runs client-side: call, wait the recorded gap, next call. A plait
server also reports KV usage on ``/metrics``, sampled when present, and its engine's and planner's counters on
``/server_info``, read before and after the run: the run reports the same engine counters as an in-process one
(prefix hits, evictions, admission stops, ...). Without ``/server_info`` the prefix-cache counters of ``/metrics``
give the prefix hit rate alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import httpx

from plait.bench.engine_counters import engine_counters_delta
from plait.bench.replay.records import AgentSession, RequestRecord, SessionRecord
from plait.bench.serve_load import parse_metrics

CONNECT_TIMEOUT_S = 5.0
# Request fields beyond OpenAI's that the replay sends, and what is lost when a target refuses one.
EXTENSION_FIELDS = {
    "ignore_eos": "output lengths were not forced",
    "program_id": "calls were not grouped into programs",
}


class TargetError(RuntimeError):
    """The target cannot be used (unreachable, not OpenAI-compatible, no model); the message says what to fix."""


class HttpTarget:
    """An OpenAI-compatible server at ``base_url`` (``http://host:port``, with or without ``/v1``)."""

    mode = "target"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        request_timeout_s: float = 600.0,
        send_program_ids: bool = True,
    ) -> None:
        """``send_program_ids``: name each agent session's program (``program_id``); off, the server sees plain
        requests (a plait server recognises each session's calls by their prompts)."""
        base = base_url.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.model = model
        self.label = f"target {self.base_url}"
        self.request_timeout_s = request_timeout_s
        self.send_program_ids = send_program_ids
        self.refused: set[str] = set()  # extension fields the target rejected (not sent again)
        self.notes: list[str] = []
        self.client: httpx.AsyncClient | None = None
        self._metrics_ok = True
        self._counters_before: dict[str, float] = {}
        self._server_counters_before: dict[str, Any] | None = None

    max_context = None  # unknown: the server rejects what does not fit

    @staticmethod
    def count_tokens(text: str) -> int:
        return max(1, len(text) // 4)  # no tokenizer for a remote model: about 4 characters per token

    async def start(self, sessions: Sequence[AgentSession] = ()) -> None:
        """Connect and pick the model (the first one ``/v1/models`` lists unless given)."""
        timeout = httpx.Timeout(self.request_timeout_s, connect=CONNECT_TIMEOUT_S)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        try:
            response = await self.client.get("/v1/models")
        except httpx.HTTPError as error:
            await self.close()
            raise TargetError(
                f"cannot reach {self.base_url}/v1/models ({type(error).__name__}: {error}); start the server or fix "
                "--target (an OpenAI-compatible base URL such as http://127.0.0.1:8000)"
            ) from error
        if response.status_code != 200:
            await self.close()
            raise TargetError(
                f"{self.base_url}/v1/models answered HTTP {response.status_code}: is --target an OpenAI-compatible "
                f"server? ({response.text[:200]})"
            )
        try:
            models = [entry["id"] for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as error:
            await self.close()
            raise TargetError(f"{self.base_url}/v1/models did not return an OpenAI model list") from error
        if self.model is None:
            if not models:
                await self.close()
                raise TargetError(f"{self.base_url} serves no model; pass --target-model")
            self.model = models[0]
        self._counters_before = await self._counters()
        self._server_counters_before = await self._server_counters()

    async def request(
        self, record: RequestRecord, prompt: list[int] | str, clock: float, program_id: str | None = None
    ) -> None:
        """Send one streaming completion; fill ``record`` (times relative to ``clock``)."""
        assert self.client is not None, "start() first"
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": record.output_tokens_target,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        extensions = {"ignore_eos": True, "program_id": program_id}
        body.update({k: v for k, v in extensions.items() if v is not None and k not in self.refused})
        record.sent_s = time.monotonic() - clock
        try:
            await self._stream(record, body, clock)
        except httpx.HTTPError as error:
            record.error = f"{type(error).__name__}: {error}"

    async def _stream(self, record: RequestRecord, body: dict[str, Any], clock: float) -> None:
        assert self.client is not None
        async with self.client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code == 400:
                text = (await response.aread()).decode(errors="replace")
                refused = [key for key in EXTENSION_FIELDS if key in body and key in text]
                if refused:  # a server without plait's extensions: ask again without them
                    self.refused.update(refused)
                    self.notes.append(f"the target refused {', '.join(refused)}: {EXTENSION_FIELDS[refused[0]]}")
                    return await self._stream(record, {k: v for k, v in body.items() if k not in refused}, clock)
                record.error = f"HTTP 400: {text[:300]}"
                return
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread())[:300].decode(errors='replace')}"
                return
            chunks = 0
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    record.error = str(event["error"])[:300]
                    return
                for choice in event.get("choices") or []:
                    if choice.get("text"):
                        chunks += 1
                        if record.first_token_s is None:
                            record.first_token_s = time.monotonic() - clock
                usage = event.get("usage")
                if usage:
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    if details.get("cached_tokens") is not None:
                        record.cached_tokens = int(details["cached_tokens"])
            record.finished_s = time.monotonic() - clock
            record.output_tokens = record.output_tokens or chunks
            record.ok = True

    async def session(
        self,
        record: SessionRecord,
        calls: list[RequestRecord],
        session: AgentSession,
        prompts: Sequence[str],
        clock: float,
    ) -> None:
        """Call, wait the recorded gap, call, ... (client-side); stops at the first failed call."""
        gaps = session.gaps_s()
        program_id = f"replay-{session.session_id}"[:200] if self.send_program_ids else None
        for i, (call, prompt) in enumerate(zip(calls, prompts, strict=True)):
            await self.request(call, prompt, clock, program_id)
            if not call.ok:
                record.error = f"call {i}: {call.error}"
                break
            record.completed_calls += 1
            if i < len(gaps):
                await asyncio.sleep(gaps[i])
        record.ok = record.completed_calls == len(calls)
        record.finished_s = calls[record.completed_calls - 1].finished_s if record.ok else None

    async def kv_usage(self) -> float | None:
        """``plait_kv_usage_ratio`` from ``/metrics`` (a plait server); None once the target shows it has none."""
        values = await self._metrics()
        return values.get("plait_kv_usage_ratio")

    async def _metrics(self) -> dict[str, float]:
        if not self._metrics_ok or self.client is None:
            return {}
        try:
            response = await self.client.get("/metrics", timeout=CONNECT_TIMEOUT_S)
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            self._metrics_ok = False
            return {}
        values = parse_metrics(response.text)
        if "plait_kv_usage_ratio" not in values:
            self._metrics_ok = False
        return values

    async def _counters(self) -> dict[str, float]:
        values = await self._metrics()
        return {k: values[k] for k in ("plait_prefill_tokens", "plait_cached_prompt_tokens") if k in values}

    async def _server_counters(self) -> dict[str, Any] | None:
        """The ``counters`` of a plait server's ``/server_info`` (engine and planner); None from any other server."""
        if self.client is None:
            return None
        try:
            response = await self.client.get("/server_info", timeout=CONNECT_TIMEOUT_S)
            counters = response.json()["counters"] if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(counters, dict) or not isinstance(counters.get("engine"), dict):
            return None
        return counters

    async def finish(self) -> dict[str, Any]:
        """The target's engine counters over the run and its planner's since it started (a plait server), or its
        prefix hit rate alone (a server with only ``/metrics``); empty from any other server."""
        before_server, after_server = self._server_counters_before, await self._server_counters()
        if before_server is not None and after_server is not None:
            counters: dict[str, Any] = engine_counters_delta(
                SimpleNamespace(**before_server["engine"]), SimpleNamespace(**after_server["engine"])
            )
            counters["planner"] = after_server.get("planner", {})
            return counters
        after = await self._counters()
        before = self._counters_before
        if len(after) < 2 or len(before) < 2:
            return {}
        computed = after["plait_prefill_tokens"] - before["plait_prefill_tokens"]
        cached = after["plait_cached_prompt_tokens"] - before["plait_cached_prompt_tokens"]
        total = computed + cached
        return {"prefix_hit_rate": cached / total if total > 0 else 0.0, "cached_prompt_tokens": cached}

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
