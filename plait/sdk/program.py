"""Programs as Python: ``@plait.program`` and the ``Program`` handle (``p``) with ``gen``, ``select`` and ``tool``.

Calling ``p.gen`` / ``p.select`` / ``p.tool`` adds a node to the program's graph and returns its output
``SemanticVariable`` at once; the runtime runs the node as soon as its inputs are bound. ``await`` a variable
(or ``await var.get()``) only to branch or loop on its value in Python: the graph grows as the program runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from plait.dag import ChoiceMode, LLMCall, OnError, ToolCall, var_ref
from plait.runtime import Executor, ProgramExecution, Tool
from plait.semantic_vars import (
    SAMPLING_FIELDS,
    ChatPrompt,
    GenConstraints,
    SemanticVarError,
    SemanticVariable,
    Template,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class Program:
    """The handle a program body receives as its first argument."""

    def __init__(self, execution: ProgramExecution, executor: Executor) -> None:
        self._execution = execution
        self._executor = executor
        self._counts: dict[str, int] = {}

    @property
    def id(self) -> str:
        return self._execution.program_id

    @property
    def execution(self) -> ProgramExecution:
        return self._execution

    # ---- calls -----------------------------------------------------------------------------------------------------

    def gen(
        self,
        prompt: str | None = None,
        /,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        name: str | None = None,
        n: int = 1,
        map_over: str | None = None,
        bindings: Mapping[str, Any] | None = None,
        on_error: str = "fail",
        fallback: Any = None,
        **kwargs: Any,
    ) -> SemanticVariable:
        """Generate text from a template (``prompt``) or chat ``messages`` whose ``{{name}}`` slots are filled from
        keyword arguments: a value, a ``SemanticVariable``, or a list of them (fan-in). A slot with no argument
        binds to the program's variable of that name. Decoding keywords: ``max_tokens``, ``temperature``
        (default 0), ``top_p``, ``top_k``, ``min_p``, ``seed``, ``stop``, and one output constraint:
        ``json_schema`` (a dict, or a msgspec/dataclass type), ``json_object``, ``regex``, ``ebnf``, ``choices``.
        ``n`` samples give a list; ``map_over`` names a slot bound to a list and runs the call once per item.
        Slots named like decoding keywords go in ``bindings``.
        """
        constraint_args = {key: value for key, value in kwargs.items() if key in SAMPLING_FIELDS}
        slot_args = {key: value for key, value in kwargs.items() if key not in SAMPLING_FIELDS}
        slot_args.update(bindings or {})
        return self._add_llm_call(
            "gen",
            prompt,
            messages,
            name,
            slot_args,
            constraint_args,
            n=n,
            map_over=map_over,
            on_error=on_error,
            fallback=fallback,
        )

    def select(
        self,
        prompt: str | None = None,
        /,
        *,
        choices: Sequence[str],
        mode: str = "constrained",
        messages: Sequence[Mapping[str, str]] | None = None,
        name: str | None = None,
        bindings: Mapping[str, Any] | None = None,
        on_error: str = "fail",
        fallback: Any = None,
        **kwargs: Any,
    ) -> SemanticVariable:
        """Pick one of ``choices``. ``mode="constrained"`` decodes under a grammar admitting only the choices;
        ``mode="score"`` scores each choice by its mean token log-probability given the prompt and takes the best
        (the scores are in ``variable.metadata["scores"]``)."""
        constraint_args = {key: value for key, value in kwargs.items() if key in SAMPLING_FIELDS}
        slot_args = {key: value for key, value in kwargs.items() if key not in SAMPLING_FIELDS}
        slot_args.update(bindings or {})
        choices = list(choices)
        constraint_args["choices"] = choices
        constraint_args.setdefault("max_tokens", _choice_token_budget(choices))
        try:
            choice_mode = ChoiceMode(mode)
        except ValueError:
            raise SemanticVarError("mode", f"must be 'constrained' or 'score', got {mode!r}") from None
        return self._add_llm_call(
            "select",
            prompt,
            messages,
            name,
            slot_args,
            constraint_args,
            choice_mode=choice_mode,
            on_error=on_error,
            fallback=fallback,
        )

    def tool(
        self,
        tool: Tool | Callable[..., Any] | str,
        /,
        *,
        name: str | None = None,
        on_error: str = "fail",
        fallback: Any = None,
        **arguments: Any,
    ) -> SemanticVariable:
        """Call a tool with ``arguments`` (values, variables, or lists/dicts containing variables); the call runs
        as soon as every variable among them is bound. A function or ``Tool`` is registered on first use."""
        tool_name = tool if isinstance(tool, str) else self._executor.register_tool(tool).name
        node_id = self._node_id(name or tool_name)
        node = ToolCall(
            node_id, tool_name, _safe_name(node_id), _args_with_refs(arguments), OnError(on_error), fallback
        )
        return self._execution.add_node(node)

    def var(self, name: str) -> SemanticVariable:
        """The program's variable called ``name`` (as named by ``name=`` on a call)."""
        try:
            return self._execution.workflow.variables[name]
        except KeyError:
            raise SemanticVarError(name, "no variable of this name in the program") from None

    # ---- helpers ---------------------------------------------------------------------------------------------------

    def _add_llm_call(
        self,
        kind: str,
        prompt: str | None,
        messages: Sequence[Mapping[str, str]] | None,
        name: str | None,
        slot_args: dict[str, Any],
        constraint_args: dict[str, Any],
        **node_fields: Any,
    ) -> SemanticVariable:
        if (prompt is None) == (messages is None):
            raise SemanticVarError("prompt", "give exactly one of a prompt template or messages=[...]")
        template = Template(prompt) if prompt is not None else ChatPrompt.from_dicts(messages or [])
        ambiguous = [name for name in constraint_args if name in template.slots and name not in slot_args]
        if ambiguous:
            raise SemanticVarError(
                ambiguous[0],
                f"is both a decoding setting and a slot of the template; bind the slot with "
                f"bindings={{{ambiguous[0]!r}: ...}}",
            )
        schema = constraint_args.get("json_schema")
        if schema is not None and not isinstance(schema, dict | str):
            constraint_args["json_schema"] = _schema_of_type(schema)
        try:
            constraints = msgspec.convert(constraint_args, GenConstraints)
        except msgspec.ValidationError as error:
            raise SemanticVarError("sampling", str(error)) from None
        node_id = self._node_id(name or kind)
        on_error = OnError(node_fields.pop("on_error"))
        with self._rollback_inputs():
            bindings = {slot: self._bind(node_id, slot, value) for slot, value in slot_args.items()}
            node = LLMCall(
                node_id,
                template,
                _safe_name(node_id),
                bindings=bindings,
                constraints=constraints,
                on_error=on_error,
                **node_fields,
            )
            return self._execution.add_node(node)

    @contextlib.contextmanager
    def _rollback_inputs(self) -> Iterator[None]:
        """Literal slot values become input variables; if the node is rejected, remove them (nothing half-applied)."""
        before = set(self._execution.workflow.variables)
        try:
            yield
        except Exception:
            variables = self._execution.workflow.variables
            for name in [name for name in variables if name not in before]:
                del variables[name]
            raise

    def _bind(self, node_id: str, slot: str, value: Any) -> str | list[str]:
        if isinstance(value, SemanticVariable):
            return value.name
        if isinstance(value, list | tuple) and any(isinstance(item, SemanticVariable) for item in value):
            return [self._bind(node_id, f"{slot}_{index}", item) for index, item in enumerate(value)]  # type: ignore[misc]
        input_name = _safe_name(f"{node_id}__{slot}")
        self._execution.workflow.add_input(input_name, value)
        return input_name

    def _node_id(self, base: str) -> str:
        base = _safe_name(base)
        count = self._counts.get(base, 0) + 1
        self._counts[base] = count
        candidate = base if count == 1 else f"{base}_{count}"
        while candidate in self._execution.workflow.nodes or candidate in self._execution.workflow.variables:
            count += 1
            self._counts[base] = count
            candidate = f"{base}_{count}"
        return candidate


def _safe_name(text: str) -> str:
    name = _UNSAFE.sub("_", text)
    return name if name[:1].isalpha() or name[:1] == "_" else f"_{name}"


def _args_with_refs(value: Any) -> Any:
    if isinstance(value, SemanticVariable):
        return var_ref(value.name)
    if isinstance(value, dict):
        return {key: _args_with_refs(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_args_with_refs(item) for item in value]
    return value


def _schema_of_type(schema_type: Any) -> dict[str, Any]:
    """A JSON schema dict from a type (msgspec Struct, dataclass, TypedDict, ...), inlined at the top level."""
    try:
        (ref,), components = msgspec.json.schema_components([schema_type])
    except TypeError as error:
        raise SemanticVarError("json_schema", f"cannot derive a JSON schema from {schema_type!r}: {error}") from None
    if "$ref" not in ref:
        return ref
    own = dict(components.pop(ref["$ref"].rsplit("/", 1)[-1]))
    if components:
        own["$defs"] = components
    return own


def _choice_token_budget(choices: Sequence[str]) -> int:
    # Generous: a choice never needs more tokens than bytes (plus a few for the end of sequence).
    return max(len(choice.encode()) for choice in choices) + 4 if choices else 1


@dataclasses.dataclass
class ProgramDef:
    """A program body declared with ``@plait.program``. Run it with ``Runtime.run`` or ``Runtime.submit``."""

    fn: Callable[..., Awaitable[Any]]
    name: str

    def __call__(self, p: Program, /, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.fn(p, *args, **kwargs)


def program(fn: Callable[..., Awaitable[Any]] | None = None, /, *, name: str | None = None) -> Any:
    """Declare a program: an ``async def`` whose first parameter is the ``Program`` handle (``p``)."""

    def wrap(function: Callable[..., Awaitable[Any]]) -> ProgramDef:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"@plait.program needs an 'async def' function, got {function!r}")
        definition = ProgramDef(function, name or function.__name__)
        functools.update_wrapper(definition, function)  # type: ignore[arg-type]
        return definition

    return wrap(fn) if fn is not None else wrap


async def resolve(value: Any) -> Any:
    """``value`` with every ``SemanticVariable`` inside (lists, tuples, dicts) replaced by its awaited value."""
    if isinstance(value, SemanticVariable):
        return await value.get()
    if isinstance(value, list | tuple):
        items = [await resolve(item) for item in value]
        return type(value)(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {key: await resolve(item) for key, item in value.items()}
    return value
