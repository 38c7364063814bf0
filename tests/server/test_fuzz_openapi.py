"""Property-based fuzzing of every operation of the ``plait serve`` HTTP app from its own OpenAPI spec (schemathesis
strategies driven by hypothesis) against the REAL server of ``live_server``.

Every operation gets schema-valid (positive) and, where it has parameters or a body, schema-violating (negative)
requests, most with tenant ``a``'s API key and some with none. Workflow ids are drawn from live workflows (finished,
open, waiting for a client tool, and the ones the fuzzer submitted) as well as generated. Generation is kept cheap by
clamping ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` / ``n`` / ``best_of`` wherever they
appear in a body (and setting a small token limit where a generation body has none). Checked: no status >= 500, no
request hangs (a 30 s per-request timeout; event streams are read briefly and dropped), at least 1,000 requests in
all, and afterwards the engine is idle with no KV slot used and no tenant holding an admission.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.server.conftest import wait_engine_idle, wait_tenants_released

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

REQUEST_TIMEOUT_S = 30.0  # a request that takes longer hangs
STREAM_READ_S = 0.5  # how long an open event stream is read before the fuzzer drops it
MIN_REQUESTS = 1000
MAX_GEN_TOKENS = 3
MAX_SAMPLES = 2
GENERATION_OPS = {("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/responses")}
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")  # generation limits, any API

# Every operation of the app, in the order they are fuzzed (submissions first: their ids feed the later ones; the
# destructive ones last). Examples per operation and mode; the total is well over MIN_REQUESTS.
PLAN: list[tuple[str, str, int, int]] = [  # method, path, positive examples, negative examples
    ("GET", "/health", 40, 0),
    ("GET", "/ready", 40, 0),
    ("GET", "/metrics", 40, 0),
    ("GET", "/v1/models", 40, 0),
    ("GET", "/v1/models/{model_id}", 60, 0),  # no negative: any path segment is a valid string
    ("GET", "/v1/tools", 40, 0),
    ("GET", "/server_info", 20, 0),
    ("POST", "/v1/chat/completions", 90, 60),
    ("POST", "/v1/completions", 90, 60),
    ("POST", "/v1/responses", 90, 60),
    ("GET", "/v1/responses/{response_id}", 40, 0),  # no negative: only a path parameter
    ("GET", "/v1/programs", 30, 10),
    ("GET", "/v1/programs/{program_id}", 40, 0),  # no negative: only a path parameter
    ("GET", "/v1/programs/{program_id}/trace", 30, 0),
    ("POST", "/v1/programs/{program_id}/kv_hints", 40, 30),
    ("POST", "/v1/programs/{program_id}/migrate", 30, 20),  # one engine here: a 409 that names the flag
    ("POST", "/v1/workflows", 70, 50),
    ("GET", "/v1/workflows", 40, 30),
    ("GET", "/v1/workflows/{workflow_id}", 60, 0),  # no negative: only a path parameter
    ("GET", "/v1/workflows/{workflow_id}/events", 40, 20),
    ("POST", "/v1/workflows/{workflow_id}/tool_results", 50, 30),
    ("POST", "/v1/workflows/{workflow_id}/nodes", 50, 30),
    ("POST", "/v1/workflows/{workflow_id}/close", 40, 20),
    ("DELETE", "/v1/workflows/{workflow_id}", 60, 0),
    ("DELETE", "/v1/responses/{response_id}", 40, 0),
    ("DELETE", "/v1/programs/{program_id}", 40, 0),
]


def _clamp(value: Any, *, generation: bool = False, limit_field: str = "max_tokens") -> Any:
    """Bound the generation cost of a body: small token and sample counts everywhere; a small default (in
    ``limit_field``) where ``generation`` (an OpenAI generation body, or an LLM node of a workflow) sets none."""
    if isinstance(value, list):
        return [_clamp(item) for item in value]
    if not isinstance(value, dict):
        return value
    out = {key: _clamp(item) for key, item in value.items()}
    caps = {**dict.fromkeys(LIMIT_FIELDS, MAX_GEN_TOKENS), "n": MAX_SAMPLES}
    for key, cap in {**caps, "best_of": MAX_SAMPLES}.items():
        if type(out.get(key)) in (int, float):  # the API accepts integral floats (54147.0) as counts too
            out[key] = min(out[key], cap)
    unbounded = all(out.get(name) is None for name in LIMIT_FIELDS)
    if (generation or out.get("kind") == "llm") and unbounded:
        out[limit_field] = MAX_GEN_TOKENS
    return out


class Fuzzer:
    """Sends generated cases to the live server and records what came back."""

    def __init__(self, base_url: str, api_key: str, model_id: str) -> None:
        self.base_url = base_url
        self.model_id = model_id
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.client = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S))
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.unsendable: Counter[str] = Counter()  # cases httpx refuses to encode (e.g. non-ASCII header values)
        self.failures: list[str] = []
        self.workflow_ids: list[str] = []
        self.samples: dict[tuple[str, int], str] = {}  # the first answer of each (operation, status), for the summary

    def send(self, label: str, case: Any, mode: GenerationMode) -> None:
        authed = self.requests[label] % 10 != 9  # one in ten without an API key
        kwargs = case.as_transport_kwargs(base_url=self.base_url)
        headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"}
        if authed:
            headers.update(self.auth)
        content: dict[str, Any] = {}
        if "json" in kwargs:
            generation = (case.method.upper(), case.path) in GENERATION_OPS
            limit_field = "max_output_tokens" if case.path == "/v1/responses" else "max_tokens"
            body = _clamp(kwargs["json"], generation=generation, limit_field=limit_field)
            # Two in three schema-valid generation bodies name the served model, so they reach the engine instead
            # of stopping at the model check.
            if generation and mode is GenerationMode.POSITIVE and isinstance(body, dict) and self.requests[label] % 3:
                body["model"] = self.model_id
                # The spec cannot say that only an assistant message may have null content; give the others text.
                for message in body.get("messages") or []:
                    if (
                        isinstance(message, dict)
                        and message.get("content") is None
                        and message.get("role") != "assistant"
                    ):
                        message["content"] = "hi"
            content["json"] = body
        elif isinstance(kwargs.get("data"), (bytes, str)):
            content["content"] = kwargs["data"]
        elif kwargs.get("data") is not None:
            content["data"] = kwargs["data"]
        try:
            request = self.client.build_request(
                kwargs["method"], kwargs["url"], headers=headers, params=kwargs.get("params"), **content
            )
        except (TypeError, ValueError, UnicodeError, httpx.HTTPError):
            self.unsendable[label] += 1
            return
        self.requests[label] += 1
        started = time.monotonic()
        try:
            response = self.client.send(request, stream=True)
        except httpx.TimeoutException:
            self.failures.append(f"{label}: no response within {REQUEST_TIMEOUT_S} s: {_describe(kwargs, content)}")
            return
        try:
            self.statuses[(label, response.status_code)] += 1
            if response.status_code >= 500:
                body = response.read()[:500]
                self.failures.append(f"{label}: {response.status_code} {body!r} for {_describe(kwargs, content)}")
                return
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                self._drain_stream(label, response, started, kwargs, content)
            else:
                response.read()
                self.samples.setdefault((label, response.status_code), response.text[:200])
                if label == "POST /v1/workflows" and response.status_code == 201:
                    self.workflow_ids.append(response.json()["id"])
        finally:
            response.close()

    def _drain_stream(self, label: str, response: httpx.Response, started: float, kwargs: Any, content: Any) -> None:
        """Read an event stream until it ends or stays quiet for STREAM_READ_S: one that is still open (an open
        workflow, a tool call waiting) is fine; one that does not end within the request timeout is a hang."""
        live = "/events" in label
        if live:  # the read timeout of the body's reads (httpcore reads it when the body is first read)
            response.request.extensions["timeout"] = {**response.request.extensions["timeout"], "read": STREAM_READ_S}
        try:
            for _ in response.iter_raw():
                if time.monotonic() - started > REQUEST_TIMEOUT_S:
                    break
        except httpx.ReadTimeout:
            if live:
                return
        if not live and time.monotonic() - started > REQUEST_TIMEOUT_S:
            self.failures.append(
                f"{label}: stream did not end within {REQUEST_TIMEOUT_S} s: {_describe(kwargs, content)}"
            )

    def fuzz(self, operation: Any, mode: GenerationMode, examples: int) -> None:
        label = f"{operation.method.upper()} {operation.path}"
        known_ids = list(self.workflow_ids)
        has_workflow_id = "{workflow_id}" in operation.path

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            known=st.sampled_from(known_ids) if known_ids and has_workflow_id else st.none(),
            nonce=st.integers(),  # keeps parameterless operations from running out of distinct examples
        )
        def run(case: Any, known: str | None, nonce: int) -> None:
            if known is not None and mode is GenerationMode.POSITIVE:
                case.path_parameters = {**(case.path_parameters or {}), "workflow_id": known}
            self.send(label, case, mode)

        t0 = time.monotonic()
        run()
        print(f"{label} {mode}: {self.requests[label]} so far, {time.monotonic() - t0:.1f} s")


def _describe(kwargs: dict[str, Any], content: dict[str, Any]) -> str:
    return f"{kwargs['method']} {kwargs['url']} params={kwargs.get('params')} body={content}"[:1500]


def _start_workflows(client: httpx.Client) -> list[str]:
    """Live workflows for the fuzzer to poke at: a finished one, an open one, one waiting for a client tool."""
    bodies = [
        {"workflow": {"nodes": [{"kind": "llm", "id": "say", "prompt": "Hi", "output": "text", "max_tokens": 2}]}},
        {"workflow": {"name": "grow", "nodes": []}, "open": True},
        {
            "workflow": {
                "nodes": [{"kind": "tool", "id": "ask", "tool": "lookup", "args": {"query": "q"}, "output": "r"}]
            },
            "client_tools": [{"name": "lookup", "parameters": {"type": "object", "properties": {"query": {}}}}],
        },
    ]
    ids = []
    for body in bodies:
        response = client.post("/v1/workflows", json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def _cancel_all(client: httpx.Client) -> None:
    """Cancel every workflow of tenant ``a`` (finished ones answer 200 too)."""
    after = None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = client.get("/v1/workflows", params=params).json()
        for item in page["data"]:
            assert client.delete(f"/v1/workflows/{item['id']}").status_code == 200
        if not page["has_more"]:
            return
        after = page["last_id"]


def test_fuzz_every_operation_from_openapi(live_server, api_key_a) -> None:
    started = time.monotonic()
    headers = live_server.headers(api_key_a)
    with httpx.Client(base_url=live_server.base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        spec = client.get("/openapi.json").json()
        schema = schemathesis.openapi.from_dict(spec)
        operations = {(op.method.upper(), op.path): op for op in (r.ok() for r in schema.get_all_operations())}
        assert set(operations) == {(method, path) for method, path, _, _ in PLAN}, "an operation is not fuzzed"

        model_id = client.get("/v1/models").json()["data"][0]["id"]
        fuzzer = Fuzzer(live_server.base_url, api_key_a, model_id)
        fuzzer.workflow_ids.extend(_start_workflows(client))
        try:
            for method, path, positive, negative in PLAN:
                fuzzer.fuzz(operations[(method, path)], GenerationMode.POSITIVE, positive)
                if negative:
                    fuzzer.fuzz(operations[(method, path)], GenerationMode.NEGATIVE, negative)
        finally:
            fuzzer.client.close()
            _cancel_all(client)

    total = sum(fuzzer.requests.values())
    summary = "\n".join(
        f"{label}: {count} requests, statuses "
        + ", ".join(f"{s}x{n}" for (lbl, s), n in sorted(fuzzer.statuses.items()) if lbl == label)
        for label, count in sorted(fuzzer.requests.items())
    )
    print(f"\n{total} requests in {time.monotonic() - started:.1f} s; unsendable: {dict(fuzzer.unsendable)}\n{summary}")
    print("\n".join(f"{k}: {v}" for k, v in sorted(fuzzer.samples.items())))
    assert not fuzzer.failures, "\n".join(fuzzer.failures[:20])
    assert set(fuzzer.requests) == {f"{method} {path}" for method, path, _, _ in PLAN}
    assert total >= MIN_REQUESTS, summary
    for method, path in sorted(GENERATION_OPS):  # the fuzzer must also have reached the engine
        assert fuzzer.statuses[(f"{method} {path}", 200)] > 0, summary

    stats = wait_engine_idle(live_server.state)
    assert stats.running == 0 and stats.waiting == 0 and stats.kv_slots_used == 0, stats
    snapshot = wait_tenants_released(live_server.state)
    assert all(value == (0, 0) for value in snapshot.values()), snapshot
