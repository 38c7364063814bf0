"""Reject JSON-schema features that xgrammar 0.2.8 accepts but does not enforce.

xgrammar turns a schema into a grammar; for some keywords it logs a warning (or nothing) and drops the constraint,
so outputs would be "valid by construction" only for a weaker schema. Each rule below was found by compiling a small
schema and feeding the matcher an instance that violates the keyword (see ``tests/engine/test_grammar_schema.py``):

- ``uniqueItems``, ``dependencies``, ``dependentRequired``, ``dependentSchemas``, ``if``/``then``/``else``, ``not``,
  ``maxContains``/``minContains``, ``$dynamicRef``/``$recursiveRef`` and ``multipleOf`` on non-integers or next to
  ``minimum``/``maximum`` are ignored.
- A string with ``pattern`` (or ``format``) and ``minLength``/``maxLength``: the length bounds are ignored; with both
  ``pattern`` and ``format`` the pattern is ignored. Lookaround in a pattern is ignored.
- ``format`` values outside ``ENFORCED_FORMATS`` (``idn-email``, ``iri``, ``regex``, custom ones...) are ignored.
- ``enum``/``const`` next to other assertions (``minLength``, ``maximum``, a contradicting ``type``...): only the
  listed values are enforced.
- ``required`` names a property that ``properties`` does not declare: the requirement is dropped.
- ``allOf`` with more than one subschema, and ``anyOf``/``oneOf`` next to other assertions: only part is enforced.
- ``oneOf`` whose branches may overlap is enforced as ``anyOf``: accepted only when the branches are provably
  disjoint (different types, disjoint ``const``/``enum``, a discriminating required property, or closed objects that
  require a key the other branch cannot produce).
- ``$ref`` to another document is not resolved; a ``$ref`` next to other assertions ignores them.

Anything rejected raises ``InvalidRequestError("json_schema", "... at /pointer: ...")``.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

from plait.engine.errors import InvalidRequestError

ENFORCED_FORMATS = frozenset(
    {
        "date",
        "date-time",
        "time",
        "duration",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "uri",
        "uri-reference",
        "uri-template",
        "uuid",
        "json-pointer",
        "relative-json-pointer",
    }
)
IGNORED_KEYWORDS = {
    "uniqueItems": "'uniqueItems' is not enforced by the grammar",
    "dependencies": "'dependencies' is not enforced by the grammar",
    "dependentRequired": "'dependentRequired' is not enforced by the grammar",
    "dependentSchemas": "'dependentSchemas' is not enforced by the grammar",
    "if": "'if'/'then'/'else' is not enforced by the grammar",
    "not": "'not' is not enforced by the grammar",
    "maxContains": "'maxContains' is not enforced by the grammar",
    "minContains": "'minContains' is not enforced by the grammar",
    "$dynamicRef": "'$dynamicRef' is not supported by the grammar",
    "$recursiveRef": "'$recursiveRef' is not supported by the grammar",
}
# Keywords that constrain nothing (or only name/hold subschemas checked on their own).
ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "id",
        "$anchor",
        "$comment",
        "$defs",
        "definitions",
        "$vocabulary",
        "title",
        "description",
        "default",
        "examples",
        "example",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
    }
)
_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_VALUES = ("additionalProperties", "items", "contains", "propertyNames", "unevaluatedProperties")
_SCHEMA_VALUES_EXTRA = ("unevaluatedItems", "additionalItems")


def check_schema_enforceable(schema: Any) -> None:
    """Raise ``InvalidRequestError('json_schema', ...)`` at the first keyword the grammar would not enforce."""
    _Checker(schema).visit(schema, "")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _reject(pointer: str, reason: str) -> None:
    raise InvalidRequestError("json_schema", f"at {pointer or '/'}: {reason}; rewrite the schema without it")


class _Checker:
    def __init__(self, root: Any) -> None:
        self.root = root

    def visit(self, schema: Any, pointer: str) -> None:
        if isinstance(schema, bool) or not isinstance(schema, dict):
            return
        for keyword, reason in IGNORED_KEYWORDS.items():
            if keyword in schema and not (keyword == "uniqueItems" and schema[keyword] is False):
                _reject(f"{pointer}/{keyword}", reason)
        self._check_ref(schema, pointer)
        self._check_numbers(schema, pointer)
        self._check_string(schema, pointer)
        self._check_enum(schema, pointer)
        self._check_required(schema, pointer)
        self._check_combinators(schema, pointer)
        if isinstance(schema.get("patternProperties"), dict):
            for key in schema["patternProperties"]:
                _check_pattern(str(key), f"{pointer}/patternProperties/{_escape(str(key))}")
        for key in _SCHEMA_LISTS:
            if isinstance(schema.get(key), list):
                for i, sub in enumerate(schema[key]):
                    self.visit(sub, f"{pointer}/{key}/{i}")
        for key in _SCHEMA_MAPS:
            if isinstance(schema.get(key), dict):
                for name, sub in schema[key].items():
                    self.visit(sub, f"{pointer}/{key}/{_escape(str(name))}")
        for key in _SCHEMA_VALUES + _SCHEMA_VALUES_EXTRA:
            if key in schema:
                self.visit(schema[key], f"{pointer}/{key}")

    def _check_ref(self, schema: dict[str, Any], pointer: str) -> None:
        ref = schema.get("$ref")
        if ref is None:
            return
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            _reject(f"{pointer}/$ref", f"'$ref' {ref!r} points outside this schema; only local '#/...' refs resolve")
        siblings = _assertions(schema) - {"$ref"}
        if siblings:
            _reject(pointer, f"'$ref' next to {_names(siblings)}: the grammar ignores keywords beside a '$ref'")

    @staticmethod
    def _check_numbers(schema: dict[str, Any], pointer: str) -> None:
        if "multipleOf" in schema:
            types = _types(schema)
            if types != {"integer"} or not _is_whole(schema["multipleOf"]):
                _reject(
                    f"{pointer}/multipleOf", "'multipleOf' is only enforced for integers (type 'integer', whole step)"
                )
            bounds = [k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema]
            if bounds:
                _reject(pointer, f"'multipleOf' next to {_names(bounds)}: the grammar ignores 'multipleOf' then")

    @staticmethod
    def _check_string(schema: dict[str, Any], pointer: str) -> None:
        lengths = [k for k in ("minLength", "maxLength") if k in schema]
        fmt = schema.get("format")
        if "pattern" in schema:
            pattern = schema["pattern"]
            if isinstance(pattern, str):
                _check_pattern(pattern, f"{pointer}/pattern")
            if lengths:
                _reject(
                    pointer, f"a string with both 'pattern' and {_names(lengths)}: the length bounds are not enforced"
                )
            if fmt is not None:
                _reject(pointer, "a string with both 'pattern' and 'format': the pattern is not enforced")
        if fmt is not None:
            if fmt not in ENFORCED_FORMATS:
                _reject(
                    f"{pointer}/format",
                    f"format {fmt!r} is not enforced by the grammar (enforced: {', '.join(sorted(ENFORCED_FORMATS))})",
                )
            if lengths:
                _reject(
                    pointer, f"a string with both 'format' and {_names(lengths)}: the length bounds are not enforced"
                )

    @staticmethod
    def _check_enum(schema: dict[str, Any], pointer: str) -> None:
        if "enum" not in schema and "const" not in schema:
            return
        others = _assertions(schema) - {"enum", "const", "type"}
        if others:
            key = "enum" if "enum" in schema else "const"
            _reject(pointer, f"'{key}' next to {_names(others)}: only the listed values are enforced")
        types = _types(schema)
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if types is not None and isinstance(values, list):
            bad = [v for v in values if not types & _json_types(v)]
            if bad:
                _reject(pointer, f"value {bad[0]!r} does not match 'type' {sorted(types)}: the type is not enforced")

    @staticmethod
    def _check_required(schema: dict[str, Any], pointer: str) -> None:
        required = schema.get("required")
        if not isinstance(required, list) or not required:
            return
        declared = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        missing = [name for name in required if name not in declared]
        if missing:
            _reject(
                f"{pointer}/required",
                f"required {missing[0]!r} is not declared in 'properties' of the same schema: it would not be enforced",
            )

    def _check_combinators(self, schema: dict[str, Any], pointer: str) -> None:
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and len(all_of) > 1:
            _reject(f"{pointer}/allOf", "'allOf' with more than one subschema is not enforced exactly by the grammar")
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if not isinstance(branches, list):
                continue
            siblings = _assertions(schema) - {key, "type"}
            if siblings:
                _reject(pointer, f"'{key}' next to {_names(siblings)}: the grammar enforces only the branches")
            outer = _types(schema)
            if outer is not None:
                for i, branch in enumerate(branches):
                    inner = _types(self._resolve(branch))
                    if inner is None or not inner <= _widen(outer):
                        _reject(
                            f"{pointer}/{key}/{i}",
                            f"'{key}' next to 'type' needs each branch to declare a type within {sorted(outer)}",
                        )
            if key == "oneOf":
                resolved = [self._resolve(b) for b in branches]
                for (i, a), (j, b) in combinations(enumerate(resolved), 2):
                    if not _disjoint(a, b):
                        _reject(
                            f"{pointer}/oneOf",
                            f"branches {i} and {j} may both match; the grammar enforces 'oneOf' only as 'anyOf' "
                            "(make them disjoint: different types, distinct 'const' values, or distinct required keys)",
                        )

    def _resolve(self, schema: Any, depth: int = 0) -> Any:
        """Follow a local ``$ref`` (a few levels) to the schema it names; anything else is returned as is."""
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#") or depth > 8:
            return schema
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return schema
        return self._resolve(target, depth + 1)


def _assertions(schema: dict[str, Any]) -> set[str]:
    """Keywords of ``schema`` that constrain (everything but annotations and unknown extension keys)."""
    return {k for k in schema if k not in ANNOTATIONS and k in _KNOWN_ASSERTIONS}


_KNOWN_ASSERTIONS = frozenset([
    "type", "enum", "const", "$ref", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "format", "items", "prefixItems", "additionalItems", "unevaluatedItems",
    "maxItems", "minItems", "uniqueItems", "contains", "maxContains", "minContains", "maxProperties",
    "minProperties", "required", "properties", "patternProperties", "additionalProperties", "unevaluatedProperties",
    "propertyNames", "dependentRequired", "dependentSchemas", "dependencies", "allOf", "anyOf", "oneOf", "not", "if",
    "then", "else",
])  # fmt: skip


def _check_pattern(pattern: str, pointer: str) -> None:
    """Regex features xgrammar parses but ignores: lookaround. (It also drops ``^``/``$`` in the middle of a
    pattern, which only ever narrows what an alternation of anchored branches allows, so those are accepted.)"""
    if _LOOKAROUND.search(pattern):
        _reject(pointer, "lookahead/lookbehind in a pattern is not enforced by the grammar")


def _names(keys: Any) -> str:
    return ", ".join(f"'{k}'" for k in sorted(keys))


def _is_whole(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()


def _types(schema: Any) -> set[str] | None:
    """The declared ``type`` set of ``schema`` (None: any type)."""
    if not isinstance(schema, dict):
        return None
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list) and all(isinstance(t, str) for t in declared):
        return set(declared)
    if "const" in schema:
        return _json_types(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return set().union(*(_json_types(v) for v in schema["enum"]))
    return None


def _widen(types: set[str]) -> set[str]:
    """Types whose instances may also be instances of ``types`` (every integer is a number)."""
    return types | ({"integer"} if "number" in types else set())


def _json_types(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    return {"object"}


def _values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    enum = schema.get("enum")
    return enum if isinstance(enum, list) else None


def _disjoint(a: Any, b: Any) -> bool:
    """True when no instance can match both ``a`` and ``b`` (as the grammar generates them). Conservative."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    ta, tb = _types(a), _types(b)
    if ta is not None and tb is not None and not (_widen(ta) & _widen(tb)):
        return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None and not any(x == y and type(x) is type(y) for x in va for y in vb):
        return True
    if ta == {"object"} and tb == {"object"}:
        return _objects_disjoint(a, b)
    return False


def _objects_disjoint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    props_a, props_b = a.get("properties") or {}, b.get("properties") or {}
    req_a, req_b = set(a.get("required") or ()), set(b.get("required") or ())
    # A discriminator: a key both require, with values no instance can share.
    for key in req_a & req_b:
        sub_a, sub_b = props_a.get(key), props_b.get(key)
        if isinstance(sub_a, dict) and isinstance(sub_b, dict) and _disjoint(sub_a, sub_b):
            return True

    # The grammar of a closed object (no additional keys; xgrammar's strict mode closes objects by default) only
    # produces its declared keys: if the other branch requires a key it cannot produce, they cannot both match.
    def closed(s: dict[str, Any]) -> bool:
        return s.get("additionalProperties", False) is False and not s.get("patternProperties")

    a_excludes_b = closed(a) and bool(req_b - set(props_a))
    b_excludes_a = closed(b) and bool(req_a - set(props_b))
    return a_excludes_b and b_excludes_a
