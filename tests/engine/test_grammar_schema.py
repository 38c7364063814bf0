"""Schemas that xgrammar would silently weaken are rejected, with the JSON pointer of the keyword at fault.

Each case also shows *why*: compiled without the check, xgrammar's matcher accepts an instance that the schema
forbids. If a newer xgrammar starts enforcing a keyword, the second test fails and the rule can be dropped.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import xgrammar as xgr

from plait.engine import InvalidRequestError
from plait.engine.grammar import build_grammar, check_schema_enforceable
from plait.engine.sampling_params import SamplingParams

S = {"type": "string"}
DRAFT7 = {"$schema": "http://json-schema.org/draft-07/schema#"}
OBJ_AB = {"a": {"type": "integer"}, "b": {"type": "integer"}}
# (name, schema, pointer in the message, an instance the schema forbids but xgrammar accepts)
WEAKENED = [
    ("pattern+minLength", {"type": "object", "properties": {"x": {**S, "pattern": "^[a-z]+$", "minLength": 3}}},
     "at /properties/x:", '{"x": "ab"}'),
    ("format+maxLength", {**S, "format": "email", "maxLength": 5}, "at /:", '"abc@example.com"'),
    ("pattern+format", {**S, "format": "date", "pattern": "^x$"}, "at /:", '"2020-01-01"'),
    ("unknown format", {**S, "format": "idn-email"}, "at /format:", '"x"'),
    ("uniqueItems", {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "integer"},
     "uniqueItems": True}}, "required": ["x"]}, "at /properties/x/uniqueItems:", '{"x": [1, 1]}'),
    ("multipleOf number", {"type": "number", "multipleOf": 0.5}, "at /multipleOf:", "0.3"),
    ("multipleOf+minimum", {"type": "integer", "multipleOf": 3, "minimum": 0}, "at /:", "4"),
    ("dependentRequired", {"type": "object", "properties": OBJ_AB, "dependentRequired": {"a": ["b"]}},
     "at /dependentRequired:", '{"a": 1}'),
    ("dependencies", {**DRAFT7, "type": "object", "properties": OBJ_AB, "dependencies": {"a": ["b"]}},
     "at /dependencies:", '{"a": 1}'),
    ("if", {"type": "object", "properties": OBJ_AB, "if": {"required": ["a"]}, "then": {"required": ["b"]}},
     "at /if:", '{"a": 1}'),
    ("not", {"type": "integer", "not": {"const": 3}}, "at /not:", "3"),
    ("allOf", {"allOf": [{"type": "integer"}, {"minimum": 5}]}, "at /allOf:", "3"),
    ("oneOf overlap", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "at /oneOf:", "3"),
    ("enum+minLength", {**S, "enum": ["a", "bbb"], "minLength": 2}, "at /:", '"a"'),
    ("enum vs type", {**S, "enum": ["a", 1]}, "at /:", "1"),
    ("required undeclared", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "z"]},
     "at /required:", '{"a": 1}'),
    ("anyOf with siblings", {**S, "minLength": 3, "anyOf": [{"pattern": "^a"}, {"pattern": "^b"}]}, "at /:", '"a"'),
    ("$ref with siblings", {"$defs": {"n": {"type": "integer"}}, "type": "object",
     "properties": {"a": {"$ref": "#/$defs/n", "maximum": 3}}}, "at /properties/a:", '{"a": 5}'),
    ("lookahead", {**S, "pattern": "^(?!a)[a-z]$"}, "at /pattern:", '"a"'),
    ("maxContains", {"type": "array", "items": {"type": "integer"}, "contains": {"const": 1}, "maxContains": 1},
     "at /maxContains:", "[1, 1]"),
    ("remote $ref", {"$ref": "https://example.com/s.json"}, "at /$ref:", "1"),
]  # fmt: skip


@pytest.mark.parametrize("name, schema, pointer, _instance", WEAKENED, ids=[c[0] for c in WEAKENED])
def test_weakened_schema_is_rejected_with_its_location(name, schema, pointer, _instance):
    with pytest.raises(InvalidRequestError) as caught:
        build_grammar(SamplingParams(json_schema=schema))
    assert caught.value.field == "json_schema"
    assert caught.value.message.startswith(pointer), caught.value.message


@pytest.mark.parametrize("name, schema, _pointer, instance", WEAKENED, ids=[c[0] for c in WEAKENED])
def test_xgrammar_really_does_not_enforce_it(name, schema, _pointer, instance):
    info = xgr.TokenizerInfo([chr(i) for i in range(32, 127)], xgr.VocabType.RAW)
    try:
        compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)
    except RuntimeError:
        return  # unresolvable (remote $ref): rejected either way
    matcher = xgr.GrammarMatcher(compiled)
    assert matcher.accept_string(instance) and matcher.is_completed(), f"xgrammar now enforces {name}"
    if name == "remote $ref":
        return  # the grammar accepts any value in place of the unresolved document
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(instance), schema, format_checker=jsonschema.FormatChecker())


ENFORCED = [
    {"type": "object", "properties": {"x": {**S, "minLength": 2, "maxLength": 5}, "y": {**S, "pattern": "^a+$"}}},
    {**S, "format": "date-time"},
    {"type": "integer", "multipleOf": 3},
    {"type": "integer", "minimum": 0, "exclusiveMaximum": 30},
    {"type": "number", "minimum": 1.5, "maximum": 2.5},
    {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3, "uniqueItems": False},
    {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    {"oneOf": [{"const": "a"}, {"const": "b"}]},
    {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "cat"}, "n": {"type": "integer"}}, "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "dog"}, "ok": {"type": "boolean"}}, "required": ["kind"]},
    ]},
    {"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n", "description": "an int"}},
    {"type": "object", "properties": {"a": {"type": "string", "enum": ["x", "y"], "description": "d"}}},
]  # fmt: skip


@pytest.mark.parametrize("schema", ENFORCED, ids=range(len(ENFORCED)))
def test_enforced_schemas_are_accepted(schema):
    check_schema_enforceable(schema)
    assert build_grammar(SamplingParams(json_schema=schema)) is not None
