"""The two kinds of work in a workflow: ``LLMCall`` and ``ToolCall``, each binding one output variable.

Inputs are variables, named:
- an LLM call's template slots bind to variables through ``bindings`` (slot -> variable name, or a list of names
  for a fan-in); a slot without an entry binds to the variable of the same name;
- a tool call's ``args`` are JSON values in which ``{"$var": "name"}`` stands for a variable's value (anywhere,
  so lists and objects can mix literals and variables).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from plait.semantic_vars import ChatPrompt, GenConstraints, Prompt

VAR_REF_KEY = "$var"


class OnError(enum.Enum):
    FAIL = "fail"  # the node's failure fails its program
    FALLBACK = "fallback"  # the output variable is bound to ``fallback`` and the program goes on


class ChoiceMode(enum.Enum):
    CONSTRAINED = "constrained"  # decode under a grammar that admits only the choices
    SCORE = "score"  # score every choice by its log-probability given the prompt; pick the best


def var_ref(name: str) -> dict[str, str]:
    """The JSON value that stands for variable ``name`` inside tool arguments."""
    return {VAR_REF_KEY: name}


def is_var_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(VAR_REF_KEY), str)


def var_refs(value: Any) -> list[str]:
    """Every variable name referenced inside a JSON value, in order."""
    if is_var_ref(value):
        return [value[VAR_REF_KEY]]
    if isinstance(value, dict):
        return [name for item in value.values() for name in var_refs(item)]
    if isinstance(value, list | tuple):
        return [name for item in value for name in var_refs(item)]
    return []


def substitute(value: Any, values: dict[str, Any]) -> Any:
    """``value`` with every variable reference replaced by the variable's value."""
    if is_var_ref(value):
        return values[value[VAR_REF_KEY]]
    if isinstance(value, dict):
        return {key: substitute(item, values) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(item, values) for item in value]
    return value


@dataclass
class LLMCall:
    """Generate text from a templated prompt; bind it to ``output``.

    ``n > 1`` samples ``n`` outputs from one prefill (the output is a list). ``map_over`` names a slot whose
    variable holds a list: the call runs once per item (the output is a list, in item order). With
    ``constraints.choices``, ``choice_mode`` picks constrained decoding or log-probability scoring.
    """

    id: str
    prompt: Prompt
    output: str
    bindings: dict[str, str | list[str]] = field(default_factory=dict)
    constraints: GenConstraints = field(default_factory=GenConstraints)
    n: int = 1
    map_over: str | None = None
    choice_mode: ChoiceMode = ChoiceMode.CONSTRAINED
    on_error: OnError = OnError.FAIL
    fallback: Any = None

    kind = "llm"

    def slot_binding(self, slot: str) -> str | list[str]:
        return self.bindings.get(slot, slot)

    def input_variables(self) -> list[str]:
        names: list[str] = []
        for slot in self.prompt.slots:
            bound = self.slot_binding(slot)
            names.extend(bound if isinstance(bound, list) else [bound])
        return list(dict.fromkeys(names))

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, ChatPrompt)

    def output_schema(self) -> dict[str, Any]:
        one = self.constraints.output_schema()
        if self.n > 1 or self.map_over is not None:
            return {"type": "array", "items": one}
        return one


@dataclass
class ToolCall:
    """Call a registered tool with ``args``; bind its result to ``output``."""

    id: str
    tool: str
    output: str
    args: dict[str, Any] = field(default_factory=dict)
    on_error: OnError = OnError.FAIL
    fallback: Any = None

    kind = "tool"

    def input_variables(self) -> list[str]:
        return list(dict.fromkeys(var_refs(self.args)))


Node = LLMCall | ToolCall
