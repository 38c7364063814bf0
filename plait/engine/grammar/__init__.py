"""Grammar-constrained decoding with xgrammar: constraints, compilation, per-sample matchers, token bitmasks,
tool-call formats, choice scoring and the check that rejects JSON-schema features xgrammar would not enforce."""

from __future__ import annotations

from plait.engine.grammar.backend import GrammarBackend, GrammarTimings, RequestGrammar
from plait.engine.grammar.bitmask import TokenBitmask
from plait.engine.grammar.choice_scoring import choice_score, scoring_requests
from plait.engine.grammar.constraint import build_grammar
from plait.engine.grammar.schema_check import ENFORCED_FORMATS, check_schema_enforceable
from plait.engine.grammar.tools import (
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    ParsedToolOutput,
    ToolCall,
    parse_tool_calls,
)
from plait.engine.sampling_params import CONSTRAINT_FIELDS

__all__ = [
    "CONSTRAINT_FIELDS",
    "ENFORCED_FORMATS",
    "TOOL_CALL_BEGIN",
    "TOOL_CALL_END",
    "GrammarBackend",
    "GrammarTimings",
    "ParsedToolOutput",
    "RequestGrammar",
    "TokenBitmask",
    "ToolCall",
    "build_grammar",
    "check_schema_enforceable",
    "choice_score",
    "parse_tool_calls",
    "scoring_requests",
]
