"""Tools: JSON schemas and msgspec types derived from type hints, argument and result checks, bad definitions."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import msgspec
import pytest

from plait.runtime import Tool, ToolDefinitionError, ToolRegistry


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


class Query(msgspec.Struct):
    table: str
    limit: int = 10


def lookup(name: str, count: int, rows: list[dict], maybe: Optional[int], flag: bool = True) -> list[dict]:  # noqa: UP045
    """Look things up."""
    return rows


def test_schema_from_type_hints():
    tool = Tool(lookup)
    schema = tool.spec.parameters
    assert tool.name == "lookup" and tool.description == "Look things up."
    assert schema["type"] == "object"
    props = schema["properties"]
    assert props["name"] == {"type": "string"}
    assert props["count"] == {"type": "integer"}
    assert props["rows"] == {"type": "array", "items": {"type": "object"}}
    assert props["maybe"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert props["flag"] == {"type": "boolean", "default": True}
    assert set(schema["required"]) == {"name", "count", "rows", "maybe"}  # flag has a default; maybe does not
    assert tool.spec.returns == {"type": "array", "items": {"type": "object"}}


def test_schema_of_dataclass_and_struct_parameters():
    def plot(point: Point, query: Query) -> Point:
        return point

    tool = Tool(plot)
    schema = tool.spec.parameters
    defs = schema["$defs"]
    assert schema["properties"]["point"] == {"$ref": "#/$defs/Point"}
    assert schema["properties"]["query"] == {"$ref": "#/$defs/Query"}
    assert defs["Point"]["required"] == ["x"] and defs["Point"]["properties"]["x"] == {"type": "integer"}
    assert defs["Query"]["properties"]["limit"] == {"type": "integer", "default": 10}
    kwargs = tool.convert_arguments({"point": {"x": 1}, "query": {"table": "t"}})
    assert kwargs == {"point": Point(1, 0), "query": Query("t", 10)}
    assert tool.convert_result(Point(3, 4)) == {"x": 3, "y": 4}
    with pytest.raises(msgspec.ValidationError, match=r"\$\.point\.x"):
        tool.convert_arguments({"point": {"x": "one"}, "query": {"table": "t"}})


def test_argument_conversion_and_errors_name_the_parameter():
    tool = Tool(lookup)
    kwargs = tool.convert_arguments({"name": "a", "count": 2, "rows": [{"k": 1}], "maybe": None})
    assert kwargs == {"name": "a", "count": 2, "rows": [{"k": 1}], "maybe": None, "flag": True}
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int`, got `str` - at `\$\.count`"):
        tool.convert_arguments({"name": "a", "count": "two", "rows": [], "maybe": 1})
    with pytest.raises(msgspec.ValidationError, match="missing required field `rows`"):
        tool.convert_arguments({"name": "a", "count": 2, "maybe": 1})
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        tool.convert_arguments({"name": "a", "count": 2, "rows": [], "maybe": 1, "colour": "red"})
    with pytest.raises(msgspec.ValidationError, match=r"\$\.rows\[0\]"):
        tool.convert_arguments({"name": "a", "count": 2, "rows": [3], "maybe": 1})


def test_untyped_parameters_accept_anything():
    def anything(value, other=None):
        return value

    tool = Tool(anything)
    assert tool.spec.parameters["properties"]["value"] == {}
    assert tool.spec.returns is None
    for value in (1, "x", [1, {"a": None}], {"k": [1.5]}, None):
        assert tool.convert_arguments({"value": value}) == {"value": value, "other": None}
        assert tool.convert_result(value) == value


def test_return_type_checks():
    def count() -> int:
        return 0

    def rows() -> list[dict]:
        return []

    def nothing() -> None:
        return None

    assert Tool(count).convert_result(3) == 3
    assert Tool(rows).convert_result(({"a": 1},)) == [{"a": 1}]  # a tuple is JSON's array
    assert Tool(nothing).convert_result(None) is None
    for tool, bad in ((count, "three"), (count, 1.5), (count, [3]), (rows, [1]), (rows, {"a": 1})):
        with pytest.raises(msgspec.ValidationError):
            Tool(tool).convert_result(bad)
    with pytest.raises(TypeError):  # not JSON data at all
        Tool(nothing).convert_result(object())


def test_bad_definitions_raise():
    def variadic(*args: int) -> int:
        return 0

    def keywords(**kwargs: int) -> int:
        return 0

    def positional(a: int, /) -> int:
        return a

    def unresolved(a: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 0

    for fn, message in (
        (variadic, "'args'"),
        (keywords, "'kwargs'"),
        (positional, "'a'"),
        (unresolved, "cannot resolve"),
        (lambda x: x, "tool name '<lambda>'"),
        (42, "must be callable"),
    ):
        with pytest.raises(ToolDefinitionError, match=message):
            Tool(fn)  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError, match="tool name 'has space'"):
        Tool(lookup, name="has space")
    with pytest.raises(ToolDefinitionError, match="timeout_s"):
        Tool(lookup, timeout_s=0)
    with pytest.raises(ToolDefinitionError, match="retries"):
        Tool(lookup, retries=-1)
    with pytest.raises(ToolDefinitionError, match="max_concurrency"):
        Tool(lookup, max_concurrency=0)
    assert Tool(lookup, name="db.lookup-v2").name == "db.lookup-v2"


def test_tool_stays_callable():
    tool = Tool(lookup)
    assert tool(name="a", count=1, rows=[{"r": 1}], maybe=None) == [{"r": 1}]


def test_registry_names():
    def search(q: str) -> str:
        return q

    def other_search(q: str) -> str:
        return q + "!"

    registry = ToolRegistry([search])
    first = registry.get("search")
    assert first is not None and "search" in registry and "nope" not in registry
    assert registry.register(search) is first  # the same function again: the same tool
    assert registry.register(first) is first
    with pytest.raises(ToolDefinitionError, match="a different tool named 'search'"):
        registry.register(Tool(other_search, name="search"))
    assert registry.get("search") is first  # nothing half-applied
    registry.register(Tool(other_search))
    assert [tool.name for tool in registry] == ["search", "other_search"]
    specs: dict[str, Any] = registry.specs()
    assert specs["search"].parameters["properties"] == {"q": {"type": "string"}}
    assert specs["other_search"].returns == {"type": "string"}
