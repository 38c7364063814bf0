"""From a request's constraint fields to an xgrammar ``Grammar``, validated at submission.

Parsing (regex, EBNF, JSON schema -> grammar) is cheap and runs in the submitting thread, so a bad grammar raises
``InvalidRequestError`` naming the field, with the reason and location xgrammar reports, before the request reaches the
engine. Compiling the grammar against the vocabulary (the expensive part) happens later, off the engine thread
(``GrammarBackend.compile``).

A JSON schema (or ``json_object``) given with ``tools`` is the format of an answer that calls no tool: with
``tool_choice="auto"`` the grammar is the union of the calls (as for ``required``) and that JSON answer, so an answer in
free text, or JSON that violates the schema, is impossible; with ``required`` or a named choice it is the calls alone
(the format applies to a later turn's answer), with ``none`` the answer alone.

JSON is generated compactly (``any_whitespace=False``: ``", "`` and ``": "`` separators, no newlines) and objects are
closed (xgrammar's ``strict_mode``: no properties beyond those declared unless ``additionalProperties`` allows them);
both only narrow what the schema allows.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import xgrammar as xgr

from plait.engine.errors import InvalidRequestError
from plait.engine.grammar.schema_check import check_schema_enforceable
from plait.engine.grammar.tools import (
    auto_structural_tag,
    call_schema,
    required_structural_tag,
    tool_choice_mode,
    validate_tools,
)
from plait.engine.sampling_params import constraint_conflict

if TYPE_CHECKING:
    from plait.engine.sampling_params import SamplingParams

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+?:\d+: (Check failed: \(.*?\) is false: )?")
_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_JSON_OPTIONS: dict[str, Any] = {"any_whitespace": False, "strict_mode": True}


def build_grammar(params: SamplingParams) -> xgr.Grammar | None:
    """The grammar the request's output must follow, or None when it sets no constraint.

    Raises:
        InvalidRequestError: constraints that cannot go together are set (more than one, except ``tools`` with a JSON
            answer format), or a constraint is malformed, or (for JSON schemas) uses a feature the grammar would not
            enforce. The message names the field and says where and why.
    """
    given = params.constraint_fields()
    conflict = constraint_conflict(given)
    if conflict is not None:
        raise InvalidRequestError(*conflict)
    if params.tools is None and params.tool_choice != "auto":
        tool_choice_mode(params.tool_choice)  # a malformed value still fails
        if params.tool_choice != "none":
            raise InvalidRequestError("tool_choice", "needs 'tools'")
    if not given:
        return None
    name = given[0]
    if "tools" in given:
        answer = _answer_grammar(params, name) if name != "tools" else None
        return tools_grammar(params.tools, params.tool_choice, params.parallel_tool_calls, answer)
    if name in ("json_schema", "json_object"):
        return _answer_grammar(params, name)
    if name == "regex":
        return regex_grammar(params.regex)
    if name == "ebnf":
        if not isinstance(params.ebnf, str) or not params.ebnf.strip():
            raise InvalidRequestError("ebnf", "must be a non-empty EBNF grammar with a 'root' rule")
        return _parse("ebnf", lambda: xgr.Grammar.from_ebnf(params.ebnf))
    if name == "choices":
        return choices_grammar(params.choices)
    return tools_grammar(params.tools, params.tool_choice, params.parallel_tool_calls)


def json_schema_grammar(schema: Any, field: str = "json_schema") -> xgr.Grammar:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as error:
            raise InvalidRequestError(field, f"not valid JSON: {error}") from error
    if not isinstance(schema, dict | bool):
        raise InvalidRequestError(field, f"must be a JSON schema object, got {type(schema).__name__}")
    check_schema_enforceable(schema)
    text = json.dumps(schema)
    try:
        return xgr.Grammar.from_json_schema(text, **_JSON_OPTIONS)
    except Exception as error:  # xgrammar raises RuntimeError (or ValueError) with the converter's reason
        reason = _clean(error)
        where = _locate_schema_error(schema, reason)
        raise InvalidRequestError(field, f"invalid schema at {where or '/'}: {reason}") from error


def _answer_grammar(params: SamplingParams, name: str) -> xgr.Grammar:
    """The grammar of ``json_schema`` or ``json_object`` (``name``)."""
    if name == "json_schema":
        return json_schema_grammar(params.json_schema)
    return _parse("json_object", lambda: xgr.Grammar.from_json_schema({"type": "object"}, **_JSON_OPTIONS))


def regex_grammar(pattern: Any) -> xgr.Grammar:
    if not isinstance(pattern, str) or not pattern:
        raise InvalidRequestError("regex", "must be a non-empty regular expression")
    match = _LOOKAROUND.search(pattern)
    if match:
        raise InvalidRequestError(
            "regex", f"lookahead/lookbehind at position {match.start()} is not enforced by the grammar"
        )
    return _parse("regex", lambda: xgr.Grammar.from_regex(pattern))


def choices_grammar(choices: Any) -> xgr.Grammar:
    if not isinstance(choices, list) or not choices:
        raise InvalidRequestError("choices", "must be a non-empty list of strings")
    bad = [i for i, c in enumerate(choices) if not isinstance(c, str) or not c]
    if bad:
        raise InvalidRequestError("choices", f"choices[{bad[0]}] must be a non-empty string")
    # JSON string literals are valid EBNF string literals (same escapes), so any text round-trips exactly.
    rule = " | ".join(json.dumps(c) for c in dict.fromkeys(choices))
    return _parse("choices", lambda: xgr.Grammar.from_ebnf(f"root ::= {rule}"))


def tools_grammar(
    tools: Any, tool_choice: Any, parallel: bool = True, answer: xgr.Grammar | None = None
) -> xgr.Grammar | None:
    """The grammar of an output that may (``auto``) or must (``required``, named) call ``tools``. ``answer``: the
    grammar of an answer that calls none (a JSON response format); with ``auto`` the output is then either calls, one
    per line as for ``required``, or that answer (never free text)."""
    functions = validate_tools(tools, tool_choice)
    mode = tool_choice_mode(tool_choice)
    if mode == "none":
        return answer
    arguments: dict[str, dict[str, Any]] = {}
    for name, parameters in functions.items():
        try:
            check_schema_enforceable(parameters)
            # The arguments as compact JSON, like every JSON output (a structural tag's own json_schema format
            # allows runs of whitespace, which small models fall into).
            grammar = json_schema_grammar(parameters, field="tools")
        except InvalidRequestError as error:
            raise InvalidRequestError("tools", f"function {name!r} parameters: {error.message}") from error
        arguments[name] = {"type": "grammar", "grammar": str(grammar)}
    if mode == "named":
        return json_schema_grammar(call_schema(functions), field="tools")
    union = mode == "auto" and answer is not None  # calls or the answer, never free text
    structural_tag = required_structural_tag if mode == "required" or union else auto_structural_tag
    tag = structural_tag(arguments, parallel)
    calls = _parse("tools", lambda: xgr.Grammar.from_structural_tag(json.dumps(tag)))
    # No JSON value starts with "<" (TOOL_CALL_BEGIN): the output's first character tells the branches apart.
    return xgr.Grammar.union(calls, answer) if union else calls


def _parse(field: str, build: Any) -> xgr.Grammar:
    try:
        return build()
    except Exception as error:
        raise InvalidRequestError(field, _clean(error)) from error


def _clean(error: Exception) -> str:
    """xgrammar's message without its log prefix (time, C++ file and line)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    text = _LOG_PREFIX.sub("", lines[0]) if lines else type(error).__name__
    return text.split(" The JSON string is:")[0].strip()


def _locate_schema_error(schema: Any, reason: str) -> str | None:
    """JSON pointer of the deepest subschema that fails to convert on its own with the same reason (the converter's
    own message says what, not where). Subschemas are tried with the root's definitions so local refs resolve."""
    defs = {k: schema[k] for k in ("$defs", "definitions") if isinstance(schema, dict) and k in schema}
    found: list[str] = []

    def fails(sub: Any) -> bool:
        candidate = {**sub, **{k: v for k, v in defs.items() if k not in sub}} if isinstance(sub, dict) else sub
        try:
            xgr.Grammar.from_json_schema(json.dumps(candidate), **_JSON_OPTIONS)
        except Exception as error:
            return _clean(error) == reason
        return False

    def walk(sub: Any, pointer: str, depth: int) -> None:
        if depth > 32 or not isinstance(sub, dict):
            return
        for key, value in sub.items():
            if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
                for name, child in value.items():
                    walk(child, f"{pointer}/{key}/{str(name).replace('~', '~0').replace('/', '~1')}", depth + 1)
            elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
                for i, child in enumerate(value):
                    walk(child, f"{pointer}/{key}/{i}", depth + 1)
            elif key in ("items", "additionalProperties", "contains", "propertyNames", "unevaluatedProperties"):
                walk(value, f"{pointer}/{key}", depth + 1)
        if not found and fails(sub):
            found.append(pointer)

    walk(schema, "", 0)
    return found[0] if found else None
