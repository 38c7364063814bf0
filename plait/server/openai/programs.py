"""Agent programs over the OpenAI API: a sequence of chat or completion calls served as one planner program.

A call joins a program in one of three ways (``ProgramOrigin``), tried in this order:

1. explicit: ``program_id`` in the body or the ``X-Plait-Program-Id`` header (a new id starts a program);
2. a Responses API chain: ``previous_response_id`` names a stored response, whose program the call joins (the
   Responses routes resolve the chain and pass its program id as explicit);
3. implicit: the call continues an earlier call of the same tenant: its messages start with that call's messages
   (and usually the reply plait gave), or its prompt text or token ids start with that call's prompt (and usually
   its output). The longest continuation wins; a call equal to an earlier one does not continue it.

A call that joins nothing starts a program of its own (``new``), so any conversation's second call can find it.

**One mechanism.** Each program is a growing workflow the planner sees exactly as it sees a workflow's: call
``call_i`` (an LLM node), then, once no call of the program runs, the gap until its next call as a tool node
``gap_i`` named after the functions the reply called (``tool_calls``: that tool's observed durations choose the pin
TTL) or ``think`` (the client's think time, learned the same way), and a placeholder ``call_{i+1}`` after it (so the
planner knows what comes next: steps to execution, the pin's worth, the next call's reservation). When the next call
arrives the gap node finishes (its duration is learned) and the placeholder runs. Program-level ordering, the
anti-starvation bound, next-use hints and the tool-aware TTL all follow from the planner's hooks.

**Lifetime.** A program ends when it has been idle (no call running) for ``idle_timeout_s`` or on ``close`` (``DELETE
/v1/programs/{id}``); its end unpins, unreserves and forgets it in the engine, so nothing it held outlives it. A
closed id is remembered (bounded): a later call naming it is refused (409), whereas an id that expired may start
again. Programs are per tenant: one tenant's ids, chains and conversations never reach another's.
"""

from __future__ import annotations

import contextlib
import enum
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from plait.dag import LLMCall, ToolCall, Workflow, var_ref
from plait.runtime.planning import Planner
from plait.runtime.states import NodeRecord, NodeState
from plait.semantic_vars import GenConstraints, Template
from plait.server.errors import APIError

THINK_TOOL = "think"  # the gap after a reply without tool calls: the client's think time
DEFAULT_IDLE_TIMEOUT_S = 300.0
_CLOSED_REMEMBERED = 10_000  # closed ids kept to refuse their reuse; the oldest are forgotten first
ENDED_HISTORY = 1_000  # ended programs kept for inspection (GET /v1/programs/{id}); the oldest are forgotten first
_KEYS_KEPT = 4  # continuation keys per program: its latest calls' (a conversation continues from its latest state)
_MAX_GAP_TOOL_CHARS = 64


class ProgramOrigin(enum.StrEnum):
    EXPLICIT = "explicit"
    RESPONSES = "responses"
    IMPLICIT = "implicit"
    NEW = "new"


class ProgramState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # by DELETE
    EXPIRED = "expired"  # by the idle timeout


# ---- what a call is, for recognising continuations -----------------------------------------------------------------


def _message_key(message: dict[str, Any]) -> tuple[Any, ...]:
    """A message as compared for continuation: role (``developer`` is ``system``), text, and the calls it made
    (names and arguments, JSON-normalised; call ids are left out: clients echo or renumber them)."""
    role = message.get("role") or ""
    role = "system" if role == "developer" else role
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    calls = tuple(_call_key(call) for call in message.get("tool_calls") or ())
    # Compared stripped: a reply is sent back stripped (or null beside tool calls) by the clients that echo it.
    return (role, (content or "").strip(), calls)


def _call_key(call: Any) -> tuple[str, str]:
    function = call.get("function", call) if isinstance(call, dict) else call
    name = function.get("name", "") if isinstance(function, dict) else getattr(function, "name", "")
    arguments = function.get("arguments", "") if isinstance(function, dict) else getattr(function, "arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, sort_keys=True)
    with contextlib.suppress(ValueError):  # not JSON: compared as sent
        arguments = json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    return (str(name), arguments)


def _message_chain(messages: Sequence[dict[str, Any]]) -> list[int]:
    """Rolling hashes: entry ``k`` identifies ``messages[: k + 1]``."""
    chain, running = [], 0
    for message in messages:
        running = hash((running, _message_key(message)))
        chain.append(running)
    return chain


@dataclass(frozen=True)
class CallShape:
    """A call's input as the recogniser sees it: chat messages, prompt text, or prompt token ids (exactly one)."""

    messages: tuple[dict[str, Any], ...] | None = None
    text: str | None = None
    token_ids: tuple[int, ...] | None = None

    @classmethod
    def of(
        cls, messages: Sequence[dict[str, Any]] | None, text: str | None, token_ids: Sequence[int] | None
    ) -> CallShape:
        if messages is not None:
            return cls(messages=tuple(messages))
        if text is not None:
            return cls(text=text)
        return cls(token_ids=tuple(token_ids or ()))

    def continuation_keys(self, reply_text: str, reply_calls: Sequence[Any], reply_ids: Sequence[int]) -> list[Any]:
        """The keys a later call continuing this one matches: this input, and this input followed by the reply."""
        if self.messages is not None:
            chain = _message_chain(self.messages)
            if not chain:
                return []
            reply = {"role": "assistant", "content": reply_text, "tool_calls": list(reply_calls)}
            return [("chat", chain[-1]), ("chat", hash((chain[-1], _message_key(reply))))]
        if self.text is not None:
            return [("text", len(self.text), hash(self.text)), ("text", *_text_key(self.text + reply_text))]
        ids = self.token_ids or ()
        return [("ids", len(ids), hash(ids)), ("ids", *_ids_key(ids + tuple(reply_ids)))]


def _text_key(text: str) -> tuple[int, int]:
    return (len(text), hash(text))


def _ids_key(ids: tuple[int, ...]) -> tuple[int, int]:
    return (len(ids), hash(ids))


class ContinuationIndex:
    """Continuation keys -> programs, per tenant. Chat keys are looked up along the call's message chain; text and
    token-id keys at each length a live key has (a slice and a hash per length, in C)."""

    def __init__(self) -> None:
        self._programs: dict[tuple[str, Any], ConversationProgram] = {}
        self._lengths: dict[tuple[str, str], dict[int, int]] = {}  # (tenant, kind) -> length -> live keys

    def add(self, tenant: str, key: Any, program: ConversationProgram) -> None:
        """``key`` now leads to ``program``; a program it led to before loses it (the latest call wins)."""
        previous = self._programs.get((tenant, key))
        program.keys.pop(key, None)
        program.keys[key] = None  # the program's newest key
        if previous is program:
            return
        if previous is not None:
            previous.keys.pop(key, None)
        self._programs[(tenant, key)] = program
        if previous is None and key[0] != "chat":
            lengths = self._lengths.setdefault((tenant, key[0]), {})
            lengths[key[1]] = lengths.get(key[1], 0) + 1

    def remove(self, tenant: str, key: Any, program: ConversationProgram) -> None:
        program.keys.pop(key, None)
        if self._programs.get((tenant, key)) is not program:
            return
        del self._programs[(tenant, key)]
        if key[0] != "chat":
            lengths = self._lengths[(tenant, key[0])]
            lengths[key[1]] -= 1
            if not lengths[key[1]]:
                del lengths[key[1]]

    def find(self, tenant: str, shape: CallShape) -> ConversationProgram | None:
        """The program ``shape`` continues (the longest continuation), or None."""
        if shape.messages is not None:
            chain = _message_chain(shape.messages)
            for running in reversed(chain[:-1]):  # a strict prefix: the call adds at least one message
                program = self._programs.get((tenant, ("chat", running)))
                if program is not None and program.state is ProgramState.OPEN:
                    return program
            return None
        kind, value = ("text", shape.text) if shape.text is not None else ("ids", shape.token_ids or ())
        for length in sorted(self._lengths.get((tenant, kind), {}), reverse=True):
            if length >= len(value):
                continue
            program = self._programs.get((tenant, (kind, length, hash(value[:length]))))
            if program is not None and program.state is ProgramState.OPEN:
                return program
        return None


# ---- programs --------------------------------------------------------------------------------------------------------


@dataclass
class CallLog:
    """One call of a program, as ``GET /v1/programs/{id}`` shows it."""

    node: str
    started_at: float  # Unix time
    gap_before_s: float | None
    gap_tool: str | None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class ConversationProgram:
    """One program of OpenAI calls. ``planner_id`` is its id in the planner and the engine (unique per program, so
    no two tenants' or two lifetimes' programs share planner state)."""

    program_id: str
    tenant: str
    origin: ProgramOrigin
    planner_id: str
    workflow: Workflow
    created_at: float = field(default_factory=time.time)  # Unix time
    started_at: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    state: ProgramState = ProgramState.OPEN
    calls: list[CallLog] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    records: dict[str, NodeRecord] = field(default_factory=dict)  # every call's and gap's record, by node id
    gap: tuple[ToolCall, NodeRecord] | None = None  # the open gap and its record
    next_call: LLMCall | None = None  # the placeholder after the open gap
    # Its continuation keys in the index, oldest first (an ordered set): those of its latest calls only.
    keys: dict[Any, None] = field(default_factory=dict)
    tool_gaps: int = 0
    ended_at: float | None = None  # time.monotonic() when it ended

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.program_id,
            "object": "program",
            "origin": self.origin.value,
            "state": self.state.value,
            "created_at": self.created_at,
            "calls": len(self.calls),
            "running": len(self.running),
            "tool_gaps": self.tool_gaps,
            "idle_s": 0.0 if self.running else round(time.monotonic() - self.last_active, 3),
        }


@dataclass
class ProgramCall:
    """One call's place in its program: the node it runs as. ``finish`` ends it (idempotent: only the first call
    counts)."""

    programs: OpenAIPrograms
    program: ConversationProgram
    node: LLMCall
    record: NodeRecord
    log: CallLog
    shape: CallShape
    gap_tool_hint: str | None = None
    retain_s: float | None = None  # a ``retain`` KV hint, applied when the call ends
    release: bool = False  # a ``release`` KV hint, applied when the call ends
    finished: bool = False

    @property
    def planner_id(self) -> str:
        return self.program.planner_id

    def finish(
        self,
        *,
        status: int,
        reply_text: str = "",
        reply_calls: Sequence[Any] = (),
        reply_ids: Sequence[int] = (),
        finish_reason: str | None = None,
    ) -> None:
        if self.finished:
            return
        self.finished = True
        self.programs._call_finished(self, status, reply_text, list(reply_calls), list(reply_ids), finish_reason)


class OpenAIPrograms:
    """The live programs of the OpenAI API, over the executor's planner (one per server)."""

    def __init__(
        self,
        planner: Planner,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        ended_retain_s: float | None = None,
    ) -> None:
        """``ended_retain_s``: how long an ended program stays readable (the server's ``retain_finished_s``; None:
        only the ``ENDED_HISTORY`` latest are kept)."""
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self.planner = planner
        self.idle_timeout_s = idle_timeout_s
        self.ended_retain_s = ended_retain_s
        self._programs: dict[tuple[str, str], ConversationProgram] = {}
        self._closed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._ended: OrderedDict[tuple[str, str], ConversationProgram] = OrderedDict()
        self._index = ContinuationIndex()

    # ---- joining -----------------------------------------------------------------------------------------------------

    def begin_call(
        self,
        tenant: str,
        shape: CallShape,
        *,
        program_id: str | None = None,
        origin: ProgramOrigin = ProgramOrigin.EXPLICIT,
        max_tokens: int = 1,
        ignore_eos: bool = False,
        user_priority: float = 0.0,
        program_field: str = "program_id",
        new_program_id: str | None = None,
    ) -> ProgramCall:
        """Join (or start) the call's program and start its node in the planner. Without ``program_id``, a call that
        continues none starts a program named ``new_program_id`` (default: a random id) of origin ``origin`` when
        that is given as ``RESPONSES``, else ``NEW``. Raises ``APIError`` 409 naming ``program_field`` when
        ``program_id`` names a program that was closed."""
        self.expire_idle()
        program = None
        if program_id is not None:
            if (tenant, program_id) in self._closed:
                raise APIError(409, f"program {program_id!r} was closed; name a new program id", field=program_field)
            program = self._programs.get((tenant, program_id)) or self._start(tenant, program_id, origin, user_priority)
        else:
            program = self._index.find(tenant, shape)
            if program is None:
                new_id = new_program_id or f"prog_{secrets.token_hex(8)}"
                new_origin = origin if origin is ProgramOrigin.RESPONSES else ProgramOrigin.NEW
                program = self._start(tenant, new_id, new_origin, user_priority)
            elif program.origin is ProgramOrigin.NEW:
                program.origin = ProgramOrigin.IMPLICIT  # a later call recognised it
        return self._start_call(program, shape, max_tokens, ignore_eos)

    def _start(self, tenant: str, program_id: str, origin: ProgramOrigin, user_priority: float) -> ConversationProgram:
        workflow = Workflow(f"openai-{program_id}")
        workflow.add_input("conversation", "")
        # The planner's id is the program's own (an id that expires and starts again is a new program there).
        planner_id = f"openai/{secrets.token_hex(8)}"
        program = ConversationProgram(program_id, tenant, origin, planner_id, workflow)
        self._programs[(tenant, program_id)] = program
        self.planner.program_started(program.planner_id, workflow, user_priority=user_priority)
        return program

    def _start_call(
        self, program: ConversationProgram, shape: CallShape, max_tokens: int, ignore_eos: bool
    ) -> ProgramCall:
        now = time.monotonic()
        gap_s, gap_tool = None, None
        if program.gap is not None and not program.running:
            gap, record = program.gap
            record.started_at = record.started_at or now
            record.finish(NodeState.DONE)
            gap_s, gap_tool = record.run_s, gap.tool
            self.planner.node_finished(program.planner_id, gap, record)
            node = program.next_call
            program.gap, program.next_call = None, None
        else:
            node = None
        if node is None:
            node = self._add_call(program, after=None, max_tokens=max_tokens, ignore_eos=ignore_eos)
        record = NodeRecord(node.id, "llm", state=NodeState.RUNNING, started_at=now)
        program.records[node.id] = record
        program.running.add(node.id)
        program.last_active = now
        log = CallLog(node.id, time.time(), None if gap_s is None else round(gap_s, 4), gap_tool)
        program.calls.append(log)
        self.planner.node_started(program.planner_id, node)
        return ProgramCall(self, program, node, record, log, shape)

    def _add_call(self, program: ConversationProgram, after: str | None, max_tokens: int, ignore_eos: bool) -> LLMCall:
        index = sum(1 for node in program.workflow.nodes.values() if isinstance(node, LLMCall))
        text = "{{conversation}}" + (f"{{{{{after}}}}}" if after else "")
        constraints = GenConstraints(max_tokens=max(1, max_tokens), ignore_eos=ignore_eos)
        node = LLMCall(f"call_{index}", Template(text), f"out_{index}", constraints=constraints)
        program.workflow.add_node(node)
        return node

    def request_priority(self, call: ProgramCall, user_priority: float) -> tuple[float, ...]:
        """The engine priority of ``call``: the planner's ordering with the request's own user priority first."""
        options = self.planner.request_options(call.planner_id, call.node)
        priority = options.priority if isinstance(options.priority, tuple) else (float(options.priority),)
        return (float(user_priority), *priority[1:])

    # ---- ending a call -----------------------------------------------------------------------------------------------

    def _call_finished(
        self,
        call: ProgramCall,
        status: int,
        reply_text: str,
        reply_calls: list[Any],
        reply_ids: list[int],
        finish_reason: str | None,
    ) -> None:
        program, record, node = call.program, call.record, call.node
        now = time.monotonic()
        record.finish(NodeState.DONE if status == 200 else NodeState.FAILED)
        call.log.status, call.log.finish_reason = status, finish_reason
        call.log.prompt_tokens, call.log.cached_tokens = record.prompt_tokens, record.cached_tokens
        call.log.completion_tokens = record.completion_tokens
        program.running.discard(node.id)
        program.last_active = now
        self.planner.node_finished(program.planner_id, node, record)
        if program.state is not ProgramState.OPEN:
            if not program.running:
                self._end(program, now)
            return
        if status == 200:
            for key in call.shape.continuation_keys(reply_text, reply_calls, reply_ids):
                self._index.add(program.tenant, key, program)
            for key in list(program.keys)[: -2 * _KEYS_KEPT]:
                self._index.remove(program.tenant, key, program)
        elif not program.keys and not program.running:
            # A program whose calls all failed: no client can continue it implicitly, and one that named it gets a
            # new one on its next call. Holding a gap (a pin, a reservation) for it would only keep memory from others.
            program.state = ProgramState.EXPIRED
            self._end(program, now)
            return
        if not program.running:
            tool = call.gap_tool_hint or _gap_tool(reply_calls)
            self._open_gap(program, node, tool)
        if call.retain_s is not None:
            self.planner.retain(program.planner_id, call.retain_s)
        if call.release:
            self.planner.release(program.planner_id)

    def _open_gap(self, program: ConversationProgram, after: LLMCall, tool: str) -> None:
        index = len(program.calls) - 1
        gap = ToolCall(f"gap_{index}", tool, f"gap_{index}", args={"after": var_ref(after.output)})
        program.workflow.add_node(gap)
        constraints = after.constraints
        program.next_call = self._add_call(program, gap.output, constraints.max_tokens, constraints.ignore_eos)
        record = NodeRecord(gap.id, "tool", state=NodeState.RUNNING, started_at=time.monotonic())
        program.records[gap.id] = record
        program.gap = (gap, record)
        if tool != THINK_TOOL:
            program.tool_gaps += 1
        self.planner.node_started(program.planner_id, gap)

    # ---- ending programs ---------------------------------------------------------------------------------------------

    def close(self, tenant: str, program_id: str) -> ConversationProgram:
        """End a program now (``DELETE /v1/programs/{id}``): 404 when the tenant has no such open program. Calls still
        running finish; the program ends with the last of them."""
        program = self.get(tenant, program_id)
        program.state = ProgramState.CLOSED
        for key in list(program.keys):  # nothing joins it from now on, even while its last calls run
            self._index.remove(tenant, key, program)
        self._closed[(tenant, program_id)] = None
        while len(self._closed) > _CLOSED_REMEMBERED:
            self._closed.popitem(last=False)
        if not program.running:
            self._end(program, time.monotonic())
        return program

    def expire_idle(self, now: float | None = None) -> int:
        """End the programs idle (no call running) for ``idle_timeout_s`` and forget those ended more than
        ``ended_retain_s`` ago; how many ended."""
        now = time.monotonic() if now is None else now
        idle = [
            program
            for program in self._programs.values()
            if not program.running and now - program.last_active >= self.idle_timeout_s
        ]
        for program in idle:
            program.state = ProgramState.EXPIRED
            self._end(program, now)
        self._forget_ended(now)
        return len(idle)

    def _forget_ended(self, now: float) -> None:
        """Forget ended programs beyond ``ENDED_HISTORY`` and past ``ended_retain_s`` (oldest first), with their
        timeline events."""
        cutoff = None if self.ended_retain_s is None else now - self.ended_retain_s
        while self._ended:
            key, oldest = next(iter(self._ended.items()))
            expired = cutoff is not None and oldest.ended_at is not None and oldest.ended_at <= cutoff
            if len(self._ended) <= ENDED_HISTORY and not expired:
                break
            del self._ended[key]
            self.planner.timeline.forget(oldest.planner_id)

    def close_all(self) -> None:
        """End every program (server shutdown)."""
        for program in list(self._programs.values()):
            program.state = ProgramState.EXPIRED
            self._end(program, time.monotonic())

    def _end(self, program: ConversationProgram, now: float) -> None:
        if self._programs.get((program.tenant, program.program_id)) is not program:
            return
        del self._programs[(program.tenant, program.program_id)]
        program.ended_at = now
        self._ended[(program.tenant, program.program_id)] = program
        self._forget_ended(now)
        for key in list(program.keys):
            self._index.remove(program.tenant, key, program)
        if program.gap is not None:
            gap, record = program.gap
            record.finish(NodeState.CANCELLED)  # the next call never came: no duration to learn
            self.planner.node_finished(program.planner_id, gap, record)
            program.gap, program.next_call = None, None
        self.planner.program_finished(program.planner_id, program.state.value, program.started_at, now)

    # ---- reading -----------------------------------------------------------------------------------------------------

    def get(self, tenant: str, program_id: str, *, ended: bool = False) -> ConversationProgram:
        """The tenant's open program ``program_id`` (or, with ``ended``, one that ended recently); ``APIError`` 404
        otherwise."""
        program = self._programs.get((tenant, program_id))
        if program is not None and program.state is not ProgramState.OPEN and not ended:
            program = None  # closed, its last calls still running
        if program is None and ended:
            program = self._ended.get((tenant, program_id))
        if program is None:
            state = "was closed" if (tenant, program_id) in self._closed else "is not an open program"
            raise APIError(404, f"program {program_id!r} {state}", field="program_id")
        return program

    def of_tenant(self, tenant: str, *, ended: bool = False) -> list[ConversationProgram]:
        """The tenant's open programs (and, with ``ended``, those that ended recently), newest first."""
        pools = [self._programs, self._ended] if ended else [self._programs]
        return sorted(
            (program for pool in pools for (owner, _), program in pool.items() if owner == tenant),
            key=lambda program: program.created_at,
            reverse=True,
        )

    def __len__(self) -> int:
        return len(self._programs)

    def __iter__(self) -> Iterable[ConversationProgram]:
        return iter(list(self._programs.values()))


def _gap_tool(reply_calls: Sequence[Any]) -> str:
    """The gap's tool: the functions the reply called (sorted, ``+``-joined when several), else ``think``."""
    names = sorted({_call_key(call)[0] for call in reply_calls if _call_key(call)[0]})
    if not names:
        return THINK_TOOL
    return "+".join(names)[:_MAX_GAP_TOOL_CHARS]
