"""What a replay sends, decided once per trace and target so every mode sends the same: prompts and output lengths.

Request-level traces: prompt token ids from ``PromptSynthesizer``; a request that would not fit the target's context
window keeps its prefix and is cut (counted in ``notes``). Agent sessions: the recorded prompt texts (cut to the
context window at one character position per session, so prefix sharing survives) and each call's output length in
tokens (the recorded output counted by the target's tokenizer, or about 4 characters a token for a remote target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from plait.bench.replay.agent_programs import cap_prompts
from plait.bench.replay.prompt_synthesis import PromptSynthesizer
from plait.bench.replay.records import Trace, TraceRequest


@dataclass
class ReplayInputs:
    """Per request: its (possibly cut) lengths; per session: each call's prompt text and output length."""

    requests: list[TraceRequest] = field(default_factory=list)
    session_prompts: list[list[str]] = field(default_factory=list)
    session_outputs: list[list[int]] = field(default_factory=list)
    synthesizer: PromptSynthesizer | None = None
    notes: list[str] = field(default_factory=list)

    def prompt(self, index: int) -> list[int]:
        assert self.synthesizer is not None
        return self.synthesizer.prompt(index, self.requests[index])


def prepare_inputs(
    trace: Trace,
    *,
    vocab_size: int,
    count_tokens: Callable[[str], int],
    max_context: int | None,
    max_output_tokens: int | None = None,
    seed: int = 0,
    max_input_tokens: int | None = None,
) -> ReplayInputs:
    """Decide prompts and output lengths for every mode of a replay of ``trace``. ``max_input_tokens`` cuts agent
    prompts (request traces are capped when sliced)."""
    inputs = ReplayInputs()
    if trace.is_agent:
        _prepare_sessions(trace, inputs, count_tokens, max_context, max_output_tokens, max_input_tokens)
        return inputs
    inputs.synthesizer = PromptSynthesizer(vocab_size, trace.block_tokens, seed)
    cut = 0
    for request in trace.requests:
        output = request.output_tokens if max_output_tokens is None else min(request.output_tokens, max_output_tokens)
        fitted = TraceRequest(request.arrival_s, request.input_tokens, max(1, output), request.hash_ids)
        if max_context is not None and fitted.input_tokens + fitted.output_tokens > max_context:
            output = max(1, min(fitted.output_tokens, max_context // 4))
            fitted = TraceRequest(fitted.arrival_s, max(1, max_context - output), output, fitted.hash_ids)
            cut += 1
        inputs.requests.append(fitted)
    if cut:
        inputs.notes.append(f"{cut} requests longer than the {max_context}-token context window were cut to fit")
    return inputs


def _prepare_sessions(
    trace: Trace,
    inputs: ReplayInputs,
    count_tokens: Callable[[str], int],
    max_context: int | None,
    max_output_tokens: int | None,
    max_input_tokens: int | None = None,
) -> None:
    cut_sessions = 0
    for session in trace.sessions:
        outputs = [max(1, count_tokens(call.output_text)) if call.output_text else 1 for call in session.calls]
        if max_output_tokens is not None:
            outputs = [min(tokens, max_output_tokens) for tokens in outputs]
        limits = [] if max_input_tokens is None else [max_input_tokens]
        if max_context is not None:
            outputs = [min(tokens, max_context // 4) for tokens in outputs]
            limits.append(max_context - max(outputs) - 2)
        if limits:
            prompts, cut = cap_prompts(session, count_tokens, min(limits))
            cut_sessions += cut
        else:
            prompts = [call.input_text for call in session.calls]
        inputs.session_prompts.append(prompts)
        inputs.session_outputs.append(outputs)
    if cut_sessions:
        what = f"the {max_context}-token context window" if max_context is not None else ""
        if max_input_tokens is not None:
            what = f"{what} or " * bool(what) + f"--max-input-tokens {max_input_tokens}"
        inputs.notes.append(
            f"{cut_sessions} sessions had prompts longer than {what}; each prompt too long kept a head shared "
            "across the session's turns and its own newest tail"
        )
