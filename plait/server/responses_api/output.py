"""One response's output, built from its generation's updates: the output items, the response object, and the stream
events on the way (the whole response is the same build with its events dropped, so both forms agree).

Items come in generation order. Text opens a ``message`` item (one ``output_text`` part) and streams into it; a
function call closes the open message and is a ``function_call`` item of its own, whole (its arguments in one delta).
Whitespace that arrives while no message is open (the line breaks between calls) is held back and opens a message
only when text follows it; an output without any call always has a message item, empty or not.

Stream events, each with ``type`` and a ``sequence_number`` counting from 0 (what OpenAI sends)::

    response.created, response.in_progress
    per message:  response.output_item.added, response.content_part.added, response.output_text.delta ...,
                  response.output_text.done, response.content_part.done, response.output_item.done
    per call:     response.output_item.added, response.function_call_arguments.delta,
                  response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete when max_output_tokens cut it); on a failure: error, response.failed
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from plait.engine import ToolCall
from plait.server.openai.generation import Generation, SampleUpdate
from plait.server.responses_api.protocol import (
    ResponseCreateRequest,
    ResponseErrorDetails,
    ResponseFunctionToolCall,
    ResponseIncompleteDetails,
    ResponseInputTokensDetails,
    ResponseObject,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseStatus,
    ResponseTextFormatJSONSchema,
    ResponseToolChoiceFunction,
    ResponseUsage,
)

Event = dict[str, Any]


def new_response_id() -> str:
    return f"resp_{secrets.token_hex(24)}"


class ResponseOutput:
    """The output of response ``response_id`` to ``request``, served by ``model``."""

    def __init__(self, response_id: str, model: str, request: ResponseCreateRequest) -> None:
        self.id = response_id
        self.model = model
        self.request = request
        self.created_at = int(time.time())
        self.completed_at: int | None = None
        self.status: ResponseStatus = "in_progress"
        self.items: list[ResponseOutputItem] = []
        self.usage: ResponseUsage | None = None
        self.error: ResponseErrorDetails | None = None
        self._message: ResponseOutputMessage | None = None  # the message item text goes to
        self._held = ""  # whitespace held back while no message is open
        self._sequence = 0

    # ---- building ----------------------------------------------------------------------------------------------------

    def start(self) -> list[Event]:
        """The stream's first events."""
        snapshot = self._dump(self.response())
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, update: SampleUpdate) -> list[Event]:
        """Add one update of the generation's sample; the events it makes."""
        events = self._text(update.content) if update.content else []
        for call in update.tool_calls:
            events += self._close_message("completed")
            events += self._call(call)
        return events

    def finish(self, gen: Generation) -> list[Event]:
        """End the output when the generation has ended: close the open item, set the status and usage. The events
        it makes come before ``final_event``."""
        sample = gen.samples[0]
        cut = sample.finish_reason == "length"
        events: list[Event] = []
        if not self.items:  # no text and no call: an empty message (with any whitespace held back)
            events += self._open_message()
            events += self._text(self._held)
            self._held = ""
        events += self._close_message("incomplete" if cut else "completed")
        self.status = "incomplete" if cut else "completed"
        self.completed_at = int(time.time())
        self.usage = ResponseUsage(
            input_tokens=gen.prompt_tokens,
            input_tokens_details=ResponseInputTokensDetails(cached_tokens=gen.cached_tokens),
            output_tokens=gen.completion_tokens,
            total_tokens=gen.prompt_tokens + gen.completion_tokens,
        )
        return events

    def final_event(self) -> Event:
        """``response.completed`` (or ``response.incomplete``) with the whole response."""
        kind = "response.completed" if self.status == "completed" else "response.incomplete"
        return self._event(kind, response=self._dump(self.response()))

    def fail(self, code: str, message: str, param: str | None = None) -> list[Event]:
        """End the output on a failure: the ``error`` event and ``response.failed``."""
        events = self._close_message("incomplete")
        self.status = "failed"
        self.error = ResponseErrorDetails(code=code, message=message)
        return [
            *events,
            self._event("error", code=code, message=message, param=param),
            self._event("response.failed", response=self._dump(self.response())),
        ]

    # ---- reading -----------------------------------------------------------------------------------------------------

    def response(self) -> ResponseObject:
        """The response object as it stands."""
        request = self.request
        text_format = request.text.format if request.text is not None else None
        if isinstance(text_format, ResponseTextFormatJSONSchema):
            text = {"format": text_format.model_dump(mode="json", by_alias=True, exclude_none=True)}
        elif text_format is not None:
            text = {"format": text_format.model_dump(mode="json")}
        else:
            text = {"format": {"type": "text"}}
        choice = request.tool_choice or "auto"
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            completed_at=self.completed_at,
            status=self.status,
            error=self.error,
            incomplete_details=ResponseIncompleteDetails(reason="max_output_tokens")
            if self.status == "incomplete"
            else None,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=self.model,
            output=list(self.items),
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            tool_choice=choice.model_dump() if isinstance(choice, ResponseToolChoiceFunction) else choice,
            tools=[tool.model_dump(mode="json") for tool in request.tools or []],
            text=text,
            store=request.store,
            metadata=dict(request.metadata or {}),
            user=request.user,
            usage=self.usage,
        )

    # ---- items -------------------------------------------------------------------------------------------------------

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._message is None:
            self._held += text
            if not self._held.strip():
                return events
            events += self._open_message()
            text, self._held = self._held, ""
        assert self._message is not None
        if text:
            self._message.content[0].text += text
            events.append(self._event("response.output_text.delta", **self._part_place(), delta=text, logprobs=[]))
        return events

    def _open_message(self) -> list[Event]:
        message = ResponseOutputMessage(id=f"msg_{secrets.token_hex(24)}", status="in_progress")
        added = self._event("response.output_item.added", output_index=len(self.items), item=self._dump(message))
        message.content.append(ResponseOutputText(text=""))
        self.items.append(message)
        self._message = message
        part = self._event("response.content_part.added", **self._part_place(), part=self._dump(message.content[0]))
        return [added, part]

    def _close_message(self, status: str) -> list[Event]:
        message = self._message
        if message is None:
            return []
        self._message = None
        message.status = status  # type: ignore[assignment]
        place = self._part_place(message)
        part = message.content[0]
        return [
            self._event("response.output_text.done", **place, text=part.text, logprobs=[]),
            self._event("response.content_part.done", **place, part=self._dump(part)),
            self._event("response.output_item.done", output_index=place["output_index"], item=self._dump(message)),
        ]

    def _call(self, call: ToolCall) -> list[Event]:
        arguments = json.dumps(call.arguments)
        item = ResponseFunctionToolCall(
            id=f"fc_{secrets.token_hex(24)}",
            call_id=f"call_{secrets.token_hex(12)}",
            name=call.name,
            arguments="",
            status="in_progress",
        )
        index = len(self.items)
        self.items.append(item)
        events = [self._event("response.output_item.added", output_index=index, item=self._dump(item))]
        place = {"item_id": item.id, "output_index": index}
        events.append(self._event("response.function_call_arguments.delta", **place, delta=arguments))
        item.arguments, item.status = arguments, "completed"
        events.append(self._event("response.function_call_arguments.done", **place, arguments=arguments))
        events.append(self._event("response.output_item.done", output_index=index, item=self._dump(item)))
        return events

    def _part_place(self, message: ResponseOutputMessage | None = None) -> dict[str, Any]:
        message = message or self._message
        assert message is not None
        return {"item_id": message.id, "output_index": self.items.index(message), "content_index": 0}

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    @staticmethod
    def _dump(model: Any) -> dict[str, Any]:
        return model.model_dump(mode="json", by_alias=True)
