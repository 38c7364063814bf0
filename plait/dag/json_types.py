"""Just enough JSON-schema typing to catch wrong tool arguments before a workflow runs.

Only the JSON *type* is compared (string, integer, number, boolean, array, object, null), through ``type``,
``enum``/``const``, ``anyOf``/``oneOf`` and ``$ref`` into ``$defs``. Full value validation happens when the tool
is called (the runtime converts arguments to the tool's declared types).
"""

from __future__ import annotations

from typing import Any

ALL_TYPES = frozenset({"string", "integer", "number", "boolean", "array", "object", "null"})


def json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def schema_types(schema: dict[str, Any] | None, root: dict[str, Any] | None = None) -> frozenset[str]:
    """The JSON types a schema admits (all of them when it does not say)."""
    if not schema:
        return ALL_TYPES
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"]
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return schema_types(root.get("$defs", {}).get(ref.split("/")[-1]), root)
        return ALL_TYPES
    if "const" in schema:
        return frozenset({json_type_of(schema["const"])})
    if "enum" in schema and isinstance(schema["enum"], list):
        return frozenset(json_type_of(value) for value in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return frozenset().union(*(schema_types(option, root) for option in schema[key]))
    declared = schema.get("type")
    if isinstance(declared, str):
        types = {declared}
    elif isinstance(declared, list):
        types = set(declared)
    else:
        return ALL_TYPES
    if "number" in types:
        types.add("integer")  # every integer is a number
    return frozenset(types)


def accepts_value(param_schema: dict[str, Any] | None, value: Any, *, root: dict[str, Any] | None = None) -> bool:
    """True when ``value``'s JSON type is one the parameter admits. ``root`` holds the ``$defs`` that ``$ref``s
    inside ``param_schema`` point to (a tool's whole parameters schema)."""
    return json_type_of(value) in schema_types(param_schema, root)


def accepts_schema(
    param_schema: dict[str, Any] | None, value_schema: dict[str, Any] | None, *, root: dict[str, Any] | None = None
) -> bool:
    """True when some value of ``value_schema`` could be accepted (types overlap). ``root``: as in ``accepts_value``
    (for ``param_schema``; ``value_schema`` is its own root)."""
    return bool(schema_types(param_schema, root) & schema_types(value_schema))


def describe_types(schema: dict[str, Any] | None, root: dict[str, Any] | None = None) -> str:
    types = schema_types(schema, root)
    if types == ALL_TYPES:
        return "any"
    if "number" in types:
        types = types - {"integer"}
    return " or ".join(sorted(types))
