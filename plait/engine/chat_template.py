"""Rendering chat templates: the Jinja2 programs (from GGUF metadata or tokenizer_config.json) that turn a list of
chat messages into the prompt text a model was trained on.

Templates come from model files, so they run in Jinja's immutable sandbox; messages come from users, so they are
validated first and every failure surfaces as an ``InvalidRequestError`` naming the field.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from plait.engine.errors import InvalidRequestError

# Used when a model has no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _TemplateRaised(jinja2.TemplateError):
    """A template called ``raise_exception(message)``: its message is meant for the user as is."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(
    value: Any, indent: int | str | None = None, separators: tuple[str, str] | None = None, sort_keys: bool = False
) -> str:
    # Unlike Jinja's own tojson, no HTML escaping ('<' stays '<'): the output is model input, not a web page.
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    # lru_cache does not cache exceptions, so a broken template is re-parsed (and re-reported) on every call.
    return _environment().from_string(source)


def validate_messages(messages: Any) -> None:
    """Check the shape of chat messages: a non-empty list of dicts, each with a non-empty string ``role`` and a
    string ``content`` (``None`` or absent only when the message has ``tool_calls``).

    Raises:
        InvalidRequestError: naming the offending field, e.g. ``messages[3].role``.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages", "must be a non-empty list of messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(
                where, f"must be an object with 'role' and 'content', not {type(message).__name__}"
            )
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(f"{where}.role", "must be a non-empty string")
        content = message.get("content")
        if isinstance(content, str) or (content is None and message.get("tool_calls")):
            continue
        if content is None:
            raise InvalidRequestError(f"{where}.content", "is required (it may be null only with tool_calls)")
        raise InvalidRequestError(f"{where}.content", f"must be a string, not {type(content).__name__}")


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` with the Jinja chat ``template`` (ChatML when ``None``).

    The template sees ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools`` and any
    ``extra`` variables (e.g. ``enable_thinking``), plus ``raise_exception``, ``strftime_now`` and a ``tojson`` filter.

    Raises:
        InvalidRequestError: malformed messages (field ``messages[i]...``), or the template failed to compile, called
            ``raise_exception``, or failed on these messages (field ``messages``).
    """
    validate_messages(messages)
    source = CHATML_TEMPLATE if template is None else template
    try:
        compiled = _compile(source)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidRequestError("messages", f"the model's chat template is invalid: {exc}") from exc
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
            **extra,
        )
    except _TemplateRaised as exc:
        raise InvalidRequestError("messages", str(exc)) from exc
    except Exception as exc:
        # Undefined variables, sandbox violations, type errors on unexpected message shapes: all depend on the
        # request's messages, so they are the client's to fix (or at least to see).
        raise InvalidRequestError("messages", f"the chat template failed on these messages: {exc}") from exc
