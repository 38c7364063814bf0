"""GenConstraints: defaults, validation naming each bad field, output constraints and output schemas."""

from __future__ import annotations

import math

import msgspec
import pytest

from plait.semantic_vars import OUTPUT_CONSTRAINTS, SAMPLING_FIELDS, TEXT_OUTPUT, GenConstraints, SemanticVarError


def test_defaults_are_greedy_and_valid() -> None:
    constraints = GenConstraints()
    constraints.validate()
    assert constraints.temperature == 0.0
    assert constraints.max_tokens == 256
    assert constraints.output_constraints() == []
    assert not constraints.parses_json
    assert constraints.output_schema() == TEXT_OUTPUT == {"type": "string"}


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens", "positive integer"),
        ({"max_tokens": -5}, "max_tokens", "positive integer"),
        ({"max_tokens": 2.5}, "max_tokens", "positive integer"),
        ({"max_tokens": True}, "max_tokens", "positive integer"),
        ({"temperature": -0.1}, "temperature", ">= 0"),
        ({"temperature": math.nan}, "temperature", ">= 0"),
        ({"top_p": 0.0}, "top_p", "(0, 1]"),
        ({"top_p": 1.5}, "top_p", "(0, 1]"),
        ({"top_k": -1}, "top_k", ">= 0"),
        ({"min_p": -0.5}, "min_p", "[0, 1]"),
        ({"min_p": 2.0}, "min_p", "[0, 1]"),
        ({"stop": ["ok", ""]}, "stop", "non-empty"),
        ({"stop": [3]}, "stop", "non-empty strings"),
        ({"choices": []}, "choices", "non-empty list"),
        ({"choices": ["a", ""]}, "choices", "non-empty"),
    ],
)
def test_each_bad_field_is_named(kwargs: dict, field: str, fragment: str) -> None:
    with pytest.raises(SemanticVarError) as caught:
        GenConstraints(**kwargs).validate()
    assert caught.value.field == field
    assert fragment in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json_schema": {"type": "object"}, "regex": "[a-z]+"},
        {"choices": ["yes", "no"], "json_object": True},
        {"regex": "a", "ebnf": 'root ::= "a"'},
        {"json_schema": {"type": "string"}, "choices": ["x"]},
    ],
)
def test_two_output_constraints_rejected(kwargs: dict) -> None:
    constraints = GenConstraints(**kwargs)
    given = constraints.output_constraints()
    assert sorted(given) == sorted(kwargs)
    with pytest.raises(SemanticVarError) as caught:
        constraints.validate()
    assert caught.value.field == given[1]
    assert "only one output constraint" in caught.value.message
    assert " and ".join(given) in caught.value.message


def test_three_output_constraints_lists_them_all() -> None:
    with pytest.raises(SemanticVarError) as caught:
        GenConstraints(json_object=True, regex="x", choices=["a"]).validate()
    assert "json_object and regex and choices" in caught.value.message


@pytest.mark.parametrize(
    ("kwargs", "schema", "parses_json"),
    [
        (
            {"json_schema": {"type": "array", "items": {"type": "integer"}}},
            {"type": "array", "items": {"type": "integer"}},
            True,
        ),
        ({"json_object": True}, {"type": "object"}, True),
        ({"choices": ["yes", "no"]}, {"type": "string", "enum": ["yes", "no"]}, False),
        ({"regex": r"\d+"}, {"type": "string"}, False),
        ({"ebnf": 'root ::= "a"'}, {"type": "string"}, False),
    ],
)
def test_output_schema(kwargs: dict, schema: dict, parses_json: bool) -> None:
    constraints = GenConstraints(**kwargs)
    constraints.validate()
    assert constraints.output_schema() == schema
    assert constraints.parses_json is parses_json
    assert constraints.output_constraints() == list(kwargs)


def test_valid_sampling_settings_pass() -> None:
    GenConstraints(max_tokens=1, temperature=1.3, top_p=0.9, top_k=40, min_p=0.05, seed=7, stop=["\n"]).validate()


def test_wire_form_omits_defaults_and_rejects_unknown_fields() -> None:
    assert msgspec.json.encode(GenConstraints()) == b"{}"
    encoded = msgspec.json.encode(GenConstraints(max_tokens=8, choices=["a", "b"]))
    assert msgspec.json.decode(encoded) == {"max_tokens": 8, "choices": ["a", "b"]}
    assert msgspec.json.decode(encoded, type=GenConstraints) == GenConstraints(max_tokens=8, choices=["a", "b"])
    with pytest.raises(msgspec.ValidationError, match="unknown field `temprature`"):
        msgspec.json.decode(b'{"temprature": 1}', type=GenConstraints)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.max_tokens"):
        msgspec.json.decode(b'{"max_tokens": "many"}', type=GenConstraints)


def test_field_name_sets() -> None:
    assert set(OUTPUT_CONSTRAINTS) == {"json_schema", "json_object", "regex", "ebnf", "choices"}
    assert set(OUTPUT_CONSTRAINTS) <= SAMPLING_FIELDS
    assert {"max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop"} <= SAMPLING_FIELDS
