"""Cutting a loaded trace down to what one replay sends: a time window, a request cap, faster or slower arrivals and
shorter (or longer) prompts and outputs.

Request traces are sliced per request, agent traces per session (by the session's arrival; a kept session keeps
all its calls). Token caps (``max_input_tokens``/``max_output_tokens``) apply to request traces here: an agent
call's text has no token count until the target's tokenizer sees it, so ``replay_inputs`` caps it there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

from plait.bench.replay.records import AgentCall, AgentSession, Trace, TraceRequest

_Item = TypeVar("_Item", TraceRequest, AgentSession)


@dataclass(frozen=True)
class SliceOptions:
    """What part of a trace to replay and how to reshape it.

    ``start_s``/``duration_s``: the window ``[start_s, start_s + duration_s)`` of arrivals (``None``: to the end).
    ``max_requests``: keep at most this many of the window's first requests (agent traces: sessions).
    ``time_scale``: arrivals are divided by it; 2 replays twice as fast. Agent sessions' arrivals are scaled but
    the gaps between a session's calls are not: they are tool time, a property of the tool, not of the load.
    ``length_scale``: input and output lengths are multiplied by it (agent text is cut to a prefix; it cannot grow).
    ``max_input_tokens``/``max_output_tokens``: caps on request traces' lengths after scaling.
    """

    start_s: float = 0.0
    duration_s: float | None = None
    time_scale: float = 1.0
    max_requests: int | None = None
    length_scale: float = 1.0
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first option out of range and the range it must be in."""
        _check_positive_or_zero("start_s", self.start_s)
        if self.duration_s is not None:
            _check_positive("duration_s", self.duration_s)
        _check_positive("time_scale", self.time_scale)
        _check_positive("length_scale", self.length_scale)
        for name in ("max_requests", "max_input_tokens", "max_output_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1 (or unset), got {value!r}")


def _check_positive_or_zero(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def slice_trace(trace: Trace, options: SliceOptions) -> Trace:
    """A new Trace holding the part of ``trace`` that ``options`` selects, reshaped as they say.

    Arrivals become ``(arrival - start_s) / time_scale`` (an idle start of the window stays idle). Raises
    ValueError for invalid options or an empty slice (the message gives the trace's span and record count). The
    input trace is not changed; ``meta["slice"]`` of the result records the options.
    """
    options.validate()
    end_s = math.inf if options.duration_s is None else options.start_s + options.duration_s
    if trace.is_agent:
        sessions = _window(trace.sessions, options, end_s, trace)
        result = replace(trace, requests=[], sessions=[_reshape_session(s, options) for s in sessions])
    else:
        requests = _window(trace.requests, options, end_s, trace)
        has_hash_ids = any(request.hash_ids for request in requests)
        block_tokens = max(1, round(trace.block_tokens * options.length_scale)) if has_hash_ids else trace.block_tokens
        reshaped = [_reshape_request(r, options, trace.block_tokens, block_tokens) for r in requests]
        result = replace(trace, requests=reshaped, sessions=[], block_tokens=block_tokens)
    result.meta = dict(trace.meta)
    result.meta["slice"] = asdict(options)
    result.meta["slice_result"] = {
        "records": len(result.requests) or sum(len(s.calls) for s in result.sessions),
        "sessions": len(result.sessions),
        "span_s": result.span_s(),
        "block_tokens": result.block_tokens,
    }
    return result


def _window(items: list[_Item], options: SliceOptions, end_s: float, trace: Trace) -> list[_Item]:
    """The items arriving in ``[start_s, end_s)``, at most ``max_requests`` of them (items are sorted by arrival)."""
    kept = [item for item in items if options.start_s <= item.arrival_s < end_s]
    if options.max_requests is not None:
        kept = kept[: options.max_requests]
    if not kept:
        raise ValueError(_empty_slice_message(trace, options, end_s))
    return kept


def _empty_slice_message(trace: Trace, options: SliceOptions, end_s: float) -> str:
    what = "sessions" if trace.is_agent else "requests"
    items = trace.sessions if trace.is_agent else trace.requests
    if not items:
        return f"the trace {trace.path} holds no {what} to slice"
    arrivals = [item.arrival_s for item in items]
    window = f"[{options.start_s:g}, {end_s:g}) s" if math.isfinite(end_s) else f"[{options.start_s:g} s, end)"
    return (
        f"the slice {window} holds no {what}: the trace has {len(items)} {what} arriving from "
        f"{min(arrivals):g} s to {max(arrivals):g} s (span {trace.span_s():g} s); pick --start/--duration inside it"
    )


def _scaled_len(length: int, scale: float) -> int:
    """A length times ``scale``, rounded, at least 1."""
    return max(1, round(length * scale))


def _reshape_request(request: TraceRequest, options: SliceOptions, old_block: int, new_block: int) -> TraceRequest:
    """Re-time and re-size one request; with hash ids the prompt keeps exactly one (scaled) block per id."""
    arrival_s = (request.arrival_s - options.start_s) / options.time_scale
    output_tokens = _scaled_len(request.output_tokens, options.length_scale)
    if options.max_output_tokens is not None:
        output_tokens = min(output_tokens, options.max_output_tokens)
    hash_ids = request.hash_ids
    if hash_ids:
        # Full blocks scale to new_block tokens each; the last (partial) block scales on its own, so it stays within
        # (0, new_block] and ceil(input_tokens / new_block) == len(hash_ids) still holds.
        full_blocks = len(hash_ids) - 1
        last_partial = min(old_block, max(1, request.input_tokens - old_block * full_blocks))
        input_tokens = full_blocks * new_block + min(new_block, _scaled_len(last_partial, options.length_scale))
        if options.max_input_tokens is not None and input_tokens > options.max_input_tokens:
            input_tokens = options.max_input_tokens
            hash_ids = hash_ids[: -(-input_tokens // new_block)]  # the ids whose blocks still (partly) fit
    else:
        input_tokens = _scaled_len(request.input_tokens, options.length_scale)
        if options.max_input_tokens is not None:
            input_tokens = min(input_tokens, options.max_input_tokens)
    return TraceRequest(arrival_s, input_tokens, output_tokens, hash_ids)


def _reshape_session(session: AgentSession, options: SliceOptions) -> AgentSession:
    """Re-time one session and cut its texts to prefixes (a prefix of a prefix is a prefix: sharing survives)."""
    scale = options.length_scale
    calls = tuple(
        AgentCall(
            offset_s=call.offset_s,
            input_text=_prefix(call.input_text, scale),
            output_text=_prefix(call.output_text, scale),
        )
        for call in session.calls
    )
    arrival_s = (session.arrival_s - options.start_s) / options.time_scale
    return replace(session, arrival_s=arrival_s, calls=calls)


def _prefix(text: str, scale: float) -> str:
    """The first ``max(1, round(len * scale))`` characters (the whole text when ``scale >= 1``)."""
    if scale >= 1.0:
        return text
    return text[: _scaled_len(len(text), scale)]
