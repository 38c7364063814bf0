"""What an LLM call may produce: length, stop strings, sampling, and an optional output constraint.

A msgspec ``Struct`` so the same object is the wire format. Output constraints (at most one): ``json_schema``,
``json_object``, ``regex``, ``ebnf``, ``choices``. They are enforced by the engine's grammar-constrained decoding;
this module only checks that the request is well-formed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from plait.semantic_vars.errors import SemanticVarError

OUTPUT_CONSTRAINTS = ("json_schema", "json_object", "regex", "ebnf", "choices")

# The JSON-schema type of a call's output, used to type-check what flows into tool arguments.
TEXT_OUTPUT: dict[str, Any] = {"type": "string"}


class GenConstraints(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Decoding settings of one LLM call. ``temperature`` defaults to 0 (greedy): programs are reproducible unless
    they ask for samples."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    # Generate exactly max_tokens (benchmarks force output lengths; the end-of-sequence token does not stop it).
    ignore_eos: bool = False
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    ebnf: str | None = None
    choices: list[str] | None = None

    def validate(self) -> None:
        """Raise ``SemanticVarError`` naming the first bad field."""
        if not (isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool) and self.max_tokens > 0):
            raise SemanticVarError("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:  # written so that NaN fails too
            raise SemanticVarError("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SemanticVarError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise SemanticVarError("top_k", f"must be an integer >= 0 (0: no limit), got {self.top_k!r}")
        if not 0 <= self.min_p <= 1:
            raise SemanticVarError("min_p", f"must be in [0, 1], got {self.min_p}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SemanticVarError("stop", "stop strings must be non-empty strings")
        given = self.output_constraints()
        if len(given) > 1:
            raise SemanticVarError(given[1], f"only one output constraint per call, got {' and '.join(given)}")
        if self.choices is not None and (
            not self.choices or any(not isinstance(c, str) or not c for c in self.choices)
        ):
            raise SemanticVarError("choices", "must be a non-empty list of non-empty strings")

    def output_constraints(self) -> list[str]:
        """Names of the output constraints that are set."""
        return [name for name in OUTPUT_CONSTRAINTS if getattr(self, name) not in (None, False)]

    @property
    def parses_json(self) -> bool:
        """True when the output is JSON that the runtime decodes before binding it."""
        return self.json_schema is not None or self.json_object

    def output_schema(self) -> dict[str, Any]:
        """The JSON schema of one output value (used for type checks downstream)."""
        if self.json_schema is not None:
            return self.json_schema
        if self.json_object:
            return {"type": "object"}
        if self.choices is not None:
            return {"type": "string", "enum": list(self.choices)}
        return TEXT_OUTPUT


SAMPLING_FIELDS = frozenset(GenConstraints.__struct_fields__)
