"""Prompt templates with ``{{name}}`` slots, and chat prompts made of templated messages.

Syntax: ``{{ name }}`` (spaces optional) is a slot; ``name`` is a Python identifier. A backslash before the braces,
``\\{{``, is a literal ``{{`` (the backslash is dropped). Nothing else is special, so prompts can contain JSON and
code freely.

Rendering a value: a string goes in as is; a list (a fan-in of many variables, or a variable holding a list) puts
each item on its own line; anything else is encoded as compact JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from plait.semantic_vars.errors import SemanticVarError

_TOKEN = re.compile(r"\\\{\{|\{\{\s*([^{}]*?)\s*\}\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
CHAT_ROLES = ("system", "user", "assistant", "tool")


def render_value(value: Any) -> str:
    """The text a bound value contributes to a prompt."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return "\n".join(render_value(item) for item in value)
    return msgspec.json.encode(value).decode()


@dataclass(frozen=True)
class Template:
    """A prompt with ``{{name}}`` slots. Parsing happens once, at construction; bad slot names raise."""

    text: str
    # The text split at slots: literal, slot, literal, slot, ..., literal (literals already unescaped).
    _parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise SemanticVarError("template", f"must be a string, got {type(self.text).__name__}")
        parts: list[str] = []
        literal: list[str] = []
        position = 0
        for match in _TOKEN.finditer(self.text):
            self._reject_unclosed(position, match.start())
            literal.append(self.text[position : match.start()])
            position = match.end()
            if match.group(0) == "\\{{":
                literal.append("{{")
                continue
            name = match.group(1)
            if not _IDENTIFIER.match(name):
                line = self.text.count("\n", 0, match.start()) + 1
                raise SemanticVarError(
                    "template", f"slot {match.group(0)!r} on line {line} is not a valid name (use letters, digits, _)"
                )
            parts.extend(("".join(literal), name))
            literal = []
        self._reject_unclosed(position, len(self.text))
        literal.append(self.text[position:])
        parts.append("".join(literal))
        object.__setattr__(self, "_parts", tuple(parts))

    def _reject_unclosed(self, start: int, end: int) -> None:
        """Literal text may not contain ``{{``: it is a typo of a slot (``{{name}``) or needs escaping."""
        found = self.text.find("{{", start, end)
        if found >= 0:
            line = self.text.count("\n", 0, found) + 1
            raise SemanticVarError(
                "template",
                f"'{{{{' on line {line} opens a slot that is never closed (write \\{{{{ for a literal '{{{{')",
            )

    @property
    def slots(self) -> tuple[str, ...]:
        """Slot names in order of appearance, each once."""
        return tuple(dict.fromkeys(self._parts[1::2]))

    @property
    def static_prefix(self) -> str:
        """The text before the first slot: the part every rendering shares (a prefix-cache key)."""
        return self._parts[0]

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill every slot from ``values``; a missing slot raises ``SemanticVarError`` naming it."""
        return "".join(text for _, text in self.render_parts(values))

    def render_parts(self, values: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        """``render`` in parts, in order: ``(None, literal text)`` and ``(slot name, the value's text)``; empty
        literals are left out. Joined, the texts are ``render(values)``."""
        out: list[tuple[str | None, str]] = [(None, self._parts[0])]
        for index in range(1, len(self._parts), 2):
            name = self._parts[index]
            if name not in values:
                raise SemanticVarError(name, "the template names this variable but no value is bound to it")
            out.append((name, render_value(values[name])))
            out.append((None, self._parts[index + 1]))
        return [(slot, text) for slot, text in out if slot is not None or text]


@dataclass(frozen=True)
class Message:
    """One chat message whose content is a template."""

    role: str
    content: Template

    def __post_init__(self) -> None:
        if self.role not in CHAT_ROLES:
            raise SemanticVarError("role", f"must be one of {', '.join(CHAT_ROLES)}, got {self.role!r}")


@dataclass(frozen=True)
class ChatPrompt:
    """A list of templated chat messages, rendered later with the model's chat template."""

    messages: tuple[Message, ...]

    def __post_init__(self) -> None:
        if not self.messages:
            raise SemanticVarError("messages", "a chat prompt needs at least one message")

    @classmethod
    def from_dicts(cls, messages: Sequence[Mapping[str, str]]) -> ChatPrompt:
        """Build from ``[{"role": ..., "content": ...}, ...]``; contents are templates."""
        built = []
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
                raise SemanticVarError(f"messages[{index}]", "must be an object with exactly 'role' and 'content'")
            try:
                content = Template(message["content"])
            except SemanticVarError as error:
                raise SemanticVarError(f"messages[{index}].content", error.message) from None
            try:
                built.append(Message(str(message["role"]), content))
            except SemanticVarError as error:
                raise SemanticVarError(f"messages[{index}].role", error.message) from None
        return cls(tuple(built))

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(slot for message in self.messages for slot in message.content.slots))

    @property
    def static_prefix(self) -> str:
        """Messages before the first slot, then that message's static text, as a stable key."""
        pieces = []
        for message in self.messages:
            if message.content.slots and not message.content.static_prefix:
                break  # a message that starts with a slot shares nothing beyond the messages before it
            pieces.append(f"<{message.role}>{message.content.static_prefix}")
            if message.content.slots:
                break
        return "".join(pieces)

    def render(self, values: Mapping[str, Any]) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content.render(values)} for m in self.messages]


Prompt = Template | ChatPrompt
