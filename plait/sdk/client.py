"""``plait.Client``: run the same programs and workflows as ``plait.Runtime``, on a plait server (``plait serve``).

```python
async with plait.Client("http://127.0.0.1:8000", api_key="...") as client:
    answer = await client.run(my_program, question="...")       # a @plait.program, as with Runtime
    outputs = await client.run_workflow(spec, inputs={...})      # a JSON workflow
```
Programs: the body runs here and every call runs on the server (see ``remote_program.py``). Tools: a tool the server
has is called there by name; a local Python tool (``p.tool(fn)``, or ``Client(tools=[...])`` for workflows) runs
here, as a client-side tool the server waits for. The REST endpoints have thin wrappers: ``submit_workflow``,
``get``, ``list_workflows``, ``events``, ``cancel``, ``post_tool_result``, ``add_nodes``, ``close_workflow``.
Refused requests raise ``ServerError``; failed programs ``ProgramFailedError`` (as with Runtime). Use one client
within one event loop.

Restarts: a request that cannot reach the server (connection refused or dropped) or finds it starting or draining
(503) is retried with backoff for up to ``reconnect_s``; retries are safe because ``submit_workflow`` sends an
``Idempotency-Key`` (a retry returns the workflow the first attempt created), node batches are idempotent on the
server, and a second answer to a tool call is ignored. An event stream that breaks is reopened with
``Last-Event-ID`` (events after a server restart may come twice; a node's ``node_finished`` settles it once). A tool
call offered again (same ``idempotency_key``) is answered with the result the local tool already gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec

from plait.dag import ToolSpec, Workflow, WorkflowSpec, from_workflow
from plait.runtime import ProgramCancelledError, ProgramFailedError, Tool, ToolExecutor, ToolRegistry
from plait.sdk.program import Program, ProgramDef, resolve
from plait.sdk.remote_program import RemoteProgram, tool_failure_text
from plait.sdk.server_events import RemoteFailure, ServerError, ServerEvent, parse_events

_UNSET: Any = msgspec.UNSET
RETRY_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)  # between attempts to reach the server (the last repeats)
ANSWERS_KEPT = 10_000  # local tool answers kept for calls the server may offer again


class Client:
    """A plait server. ``tools``: local Python tools that workflows and programs may call (run here)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        timeout_s: float = 60.0,
        http: httpx.AsyncClient | None = None,
        reconnect_s: float = 60.0,
    ) -> None:
        """``reconnect_s``: how long to keep retrying a server that cannot be reached or answers 503 (a restart),
        per request and per broken event stream; 0: never retry."""
        self.url = url.rstrip("/")
        self.tools = ToolRegistry(tools)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._reconnect_s = reconnect_s
        self._http = http
        self._owns_http = http is None
        self._server_tools: dict[str, ToolSpec] | None = None
        self._tool_executor = ToolExecutor()
        # Answers of local tools by the call's idempotency key: a call offered again gets the same answer (the most
        # recent ANSWERS_KEPT are kept).
        self._tool_answers: OrderedDict[str, tuple[Any, str | None]] = OrderedDict()

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            # No cap on connections: every running program holds one for its event stream, and a capped pool could
            # leave no connection for the calls that would let those programs finish.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
            self._http = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeout_s, limits=limits
            )
        return self._http

    def register_tool(self, tool: Tool | Callable[..., Any]) -> Tool:
        """Add a local tool (refused when the server has a tool of that name: calls by name go to the server)."""
        tool = tool if isinstance(tool, Tool) else Tool(tool)
        if self._server_tools is not None and tool.name in self._server_tools:
            raise ValueError(
                f"the server has a tool named {tool.name!r}; name the local one differently (plait.tool(name=...))"
            )
        return self.tools.register(tool)

    # ---- Python programs -------------------------------------------------------------------------------------------

    async def run(
        self, program: ProgramDef | Callable[..., Any], /, *args: Any, priority: int = 0, **kwargs: Any
    ) -> Any:
        """Run a program to the end and return its value, like ``Runtime.run``.

        Raises ``ProgramFailedError`` (with ``.cause``) if it fails, ``ProgramCancelledError`` if the server cancelled
        it (DELETE, its deadline, shutdown); cancelling the caller cancels the program."""
        definition = (
            program if isinstance(program, ProgramDef) else ProgramDef(program, getattr(program, "__name__", "program"))
        )
        server_tools = await self.server_tools()
        opened = await self._open(definition.name, priority)
        remote = RemoteProgram(self, opened["id"], definition.name, server_tools)
        remote.start()
        try:
            value = await resolve(await definition.fn(Program(remote, remote), *args, **kwargs))  # type: ignore[arg-type]
        except asyncio.CancelledError:
            await asyncio.shield(remote.cancel())
            raise
        except Exception as error:  # the program's own exception (including failures of calls it awaited)
            with contextlib.suppress(Exception):  # the program's error is what the caller needs to see
                await remote.finish(error=f"{type(error).__name__}: {error}")
            if remote.cancelled:
                raise ProgramCancelledError(remote.program_id) from error
            raise ProgramFailedError(remote.program_id, error) from error
        unhandled = remote.unhandled_failure()
        if unhandled is not None:
            with contextlib.suppress(Exception):
                await remote.finish(error=str(unhandled))
            raise ProgramFailedError(remote.program_id, unhandled) from unhandled
        await remote.finish()
        return value

    async def _open(self, name: str, priority: int) -> dict[str, Any]:
        """Open the program's workflow; over the tenant's concurrency limit (429), wait as the server says (up to the
        client's timeout) instead of failing."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        while True:
            try:
                body = {"name": name, "nodes": []}
                return await self.submit_workflow(body, open=True, fail_fast=False, priority=priority)
            except ServerError as error:
                wait_s = error.retry_after or 1.0
                if error.status != 429 or asyncio.get_running_loop().time() + wait_s > deadline:
                    raise
                await asyncio.sleep(wait_s)

    async def run_batch(
        self,
        program: ProgramDef | Callable[..., Any],
        inputs: Iterable[Mapping[str, Any] | tuple[Any, ...]],
        *,
        return_exceptions: bool = False,
        max_concurrency: int = 32,
    ) -> list[Any]:
        """Run one program per input, up to ``max_concurrency`` at once, results in input order (as
        ``Runtime.run_batch``)."""
        gate = asyncio.Semaphore(max_concurrency)

        async def one(item: Mapping[str, Any] | tuple[Any, ...]) -> Any:
            async with gate:
                return await (self.run(program, **item) if isinstance(item, Mapping) else self.run(program, *item))

        results = await asyncio.gather(*(one(item) for item in inputs), return_exceptions=True)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return list(results)

    # ---- JSON workflows --------------------------------------------------------------------------------------------

    async def run_workflow(self, workflow: Any, *, inputs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Submit a workflow, answer the calls of local tools, and return its outputs by name.

        Raises ``ProgramFailedError`` / ``ProgramCancelledError`` when it fails or is cancelled."""
        submitted = await self.submit_workflow(workflow, inputs=inputs, **options)
        return await self.wait_workflow(submitted["id"])

    async def wait_workflow(self, workflow_id: str) -> Any:
        """Follow a workflow's events to its end (running local tools it calls); its outputs, or raise."""
        pending: set[asyncio.Task[Any]] = set()
        try:
            async for event in self.events(workflow_id):
                if event.kind == "tool_call" and event.data.get("tool") in self.tools:
                    task = asyncio.get_running_loop().create_task(self.answer_tool_call(workflow_id, event.data))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if event.kind == "done":
                    return event.data.get("outputs", {})
                if event.kind == "failed":
                    cause = RemoteFailure(event.data.get("error") or "the workflow failed")
                    raise ProgramFailedError(workflow_id, cause) from cause
                if event.kind == "cancelled":
                    raise ProgramCancelledError(workflow_id)
        except asyncio.CancelledError:
            await asyncio.shield(self.cancel(workflow_id))
            raise
        finally:
            for task in pending:
                task.cancel()
        raise ProgramFailedError(workflow_id, RemoteFailure("the event stream ended before the workflow did"))

    async def submit_workflow(
        self,
        workflow: Workflow | WorkflowSpec | Mapping[str, Any] | str | bytes | Path,
        *,
        inputs: Mapping[str, Any] | None = None,
        client_tools: list[dict[str, Any]] | None = None,
        fail_fast: bool = True,
        priority: int = 0,
        deadline_s: float | None = None,
        open: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/workflows``. Local tools that the workflow calls and the server lacks are declared as client
        tools (add your own declarations with ``client_tools``). Returns the new workflow's status.

        ``idempotency_key``: sent as ``Idempotency-Key`` (default: a new UUID), so that a retry after a lost answer
        returns the workflow the first attempt created; pass your own to make retries of your own safe."""
        spec = _spec_dict(workflow)
        declared = list(client_tools or [])
        server_tools = await self.server_tools()
        names = {tool["name"] for tool in declared}
        for node in spec.get("nodes", []):
            name = node.get("tool") if isinstance(node, dict) else None
            if name in self.tools and name not in server_tools and name not in names:
                declared.append(self.client_tool_decl(name))
                names.add(name)
        body: dict[str, Any] = {"workflow": spec, "fail_fast": fail_fast, "priority": priority, "open": open}
        if inputs:
            body["inputs"] = dict(inputs)
        if declared:
            body["client_tools"] = declared
        if deadline_s is not None:
            body["deadline_s"] = deadline_s
        key = idempotency_key or str(uuid.uuid4())
        return await self._request("POST", "/v1/workflows", body, headers={"Idempotency-Key": key})

    async def get(self, workflow_id: str) -> dict[str, Any]:
        """``GET /v1/workflows/{id}``: state, nodes (states and timings), outputs so far, pending tool calls."""
        return await self._request("GET", f"/v1/workflows/{workflow_id}")

    async def list_workflows(self, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        """``GET /v1/workflows``: this tenant's workflows, newest first (``after``: the previous page's last_id)."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return await self._request("GET", "/v1/workflows", params=params)

    async def cancel(self, workflow_id: str) -> dict[str, Any]:
        """``DELETE /v1/workflows/{id}``; returns the final status (also for a workflow that had already ended)."""
        return await self._request("DELETE", f"/v1/workflows/{workflow_id}")

    async def post_tool_result(
        self, workflow_id: str, node: str, result: Any = _UNSET, *, error: str | None = None
    ) -> dict[str, Any]:
        """Answer a client-side tool call with its ``result``, or with ``error`` (the node then fails)."""
        body: dict[str, Any] = {"node": node}
        if error is not None:
            body["error"] = error
        else:
            body["result"] = None if result is _UNSET else result
        return await self._request("POST", f"/v1/workflows/{workflow_id}/tool_results", body)

    async def add_nodes(
        self,
        workflow_id: str,
        nodes: list[dict[str, Any]],
        *,
        inputs: Mapping[str, Any] | None = None,
        client_tools: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/workflows/{id}/nodes``: grow an open workflow (all or nothing)."""
        body = {"nodes": nodes, "inputs": dict(inputs or {}), "client_tools": list(client_tools or [])}
        return await self._request("POST", f"/v1/workflows/{workflow_id}/nodes", body)

    async def close_workflow(self, workflow_id: str, *, error: str | None = None) -> dict[str, Any]:
        """``POST /v1/workflows/{id}/close``: end an open workflow (failed with ``error`` when given)."""
        return await self._request("POST", f"/v1/workflows/{workflow_id}/close", {"error": error})

    async def events(self, workflow_id: str, *, after: int = 0) -> AsyncIterator[ServerEvent]:
        """The workflow's events from the start (or after event id ``after``) to its final event. A stream that
        breaks, or ends without a final event (the server stopped), is reopened from the last event id seen, for up
        to ``reconnect_s`` without progress."""
        timeout = httpx.Timeout(self._timeout_s, read=None)  # a stream may be quiet while tools run
        last_seen = after
        attempt = 0
        give_up_at = time.monotonic() + self._reconnect_s
        while True:
            headers = {"Last-Event-ID": str(last_seen)} if last_seen else None
            try:
                async with self.http.stream(
                    "GET", f"/v1/workflows/{workflow_id}/events", headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        error = ServerError.from_response(response)
                        if error.status != 503:
                            raise error
                        raise httpx.RemoteProtocolError(f"the server is not ready: {error.message}")
                    async for event in parse_events(response.aiter_lines()):
                        if event.id is not None:
                            if event.id <= last_seen:
                                continue  # seen before the stream was reopened
                            last_seen = event.id
                        attempt = 0
                        give_up_at = time.monotonic() + self._reconnect_s
                        yield event
                        if event.is_final:
                            return
            except httpx.TransportError:
                if time.monotonic() >= give_up_at:
                    raise
            else:  # the stream ended without a final event: the server stopped; it continues the log when back
                if time.monotonic() >= give_up_at:
                    return
            await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
            attempt += 1

    async def server_tools(self) -> dict[str, ToolSpec]:
        """``GET /v1/tools`` (fetched once): the server-side tools by name."""
        if self._server_tools is None:
            listed = await self._request("GET", "/v1/tools")
            self._server_tools = {
                item["name"]: ToolSpec(
                    item["name"], item["parameters"], item.get("returns"), item.get("description", "")
                )
                for item in listed["data"]
            }
        return self._server_tools

    # ---- local tools -----------------------------------------------------------------------------------------------

    def client_tool_decl(self, name: str) -> dict[str, Any]:
        """How a local tool is declared to the server: its schemas and how long the server should wait for it."""
        tool = self.tools.get(name)
        if tool is None:
            raise ValueError(f"no local tool named {name!r}")
        decl: dict[str, Any] = {"name": tool.name, "parameters": tool.spec.parameters, "description": tool.description}
        if tool.spec.returns is not None:
            decl["returns"] = tool.spec.returns
        if tool.timeout_s is not None:  # every attempt, the backoff between them, and a margin for the round trip
            attempts = tool.retries + 1
            decl["timeout_s"] = attempts * tool.timeout_s + tool.retry_backoff_s * (2**attempts) + 5.0
        return decl

    async def answer_tool_call(self, workflow_id: str, call: dict[str, Any]) -> None:
        """Run a local tool for a ``tool_call`` event and post its result (or its error). A call offered again
        (the same ``idempotency_key``, after a server restart) gets the first answer without running the tool; an
        answer the server no longer waits for (409: answered already, or the node ended) is dropped."""
        tool = self.tools.get(call.get("tool", ""))
        node = call["node"]
        key = call.get("idempotency_key")
        answer = self._tool_answers.get(key) if key else None
        if answer is None:
            if tool is None:
                answer = (None, f"the client has no tool {call.get('tool')!r}")
            else:
                try:
                    arguments = call.get("arguments") or {}
                    answer = (await self._tool_executor.run(tool, arguments, node, idempotency_key=key), None)
                except Exception as error:
                    answer = (None, tool_failure_text(error))
            if key:
                self._tool_answers[key] = answer
                while len(self._tool_answers) > ANSWERS_KEPT:
                    self._tool_answers.popitem(last=False)
        result, error = answer
        try:
            if error is not None:
                await self.post_tool_result(workflow_id, node, error=error)
            else:
                await self.post_tool_result(workflow_id, node, result)
        except ServerError as refused:
            if refused.status != 409:
                raise

    # ---- plumbing --------------------------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One API call; retried (see the module doc) while the server cannot be reached or answers 503, for up to
        ``reconnect_s``. Every route is safe to repeat: reads, DELETE and close are idempotent, a workflow is
        submitted with an Idempotency-Key, node batches and tool answers are deduplicated by the server."""
        content = msgspec.json.encode(body) if body is not None else None
        sent = dict(headers or {})
        if content is not None:
            sent["Content-Type"] = "application/json"
        give_up_at = time.monotonic() + self._reconnect_s
        attempt = 0
        while True:
            try:
                response = await self.http.request(method, path, content=content, headers=sent, params=params)
            except httpx.TransportError:
                if time.monotonic() >= give_up_at:
                    raise
            else:
                if response.status_code != 503 or time.monotonic() >= give_up_at:
                    if response.status_code >= 400:
                        raise ServerError.from_response(response)
                    return response.json()
                retry_after = ServerError.from_response(response).retry_after
                if retry_after is not None:
                    await asyncio.sleep(min(retry_after, max(0.0, give_up_at - time.monotonic())))
                    continue
            await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
            attempt += 1

    async def aclose(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()
        self._http = None if self._owns_http else self._http

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _spec_dict(workflow: Workflow | WorkflowSpec | Mapping[str, Any] | str | bytes | Path) -> dict[str, Any]:
    if isinstance(workflow, Workflow):
        workflow = from_workflow(workflow)
    if isinstance(workflow, WorkflowSpec):
        return msgspec.to_builtins(workflow)
    if isinstance(workflow, Mapping):
        return dict(workflow)
    if isinstance(workflow, Path) or (isinstance(workflow, str) and not workflow.lstrip().startswith("{")):
        workflow = Path(workflow).read_bytes()
    return msgspec.json.decode(workflow)
