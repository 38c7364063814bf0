"""The embedded engine: Llama-family models, paged KV, continuous batching, sampling, streaming.

Owns: turning ``GenerateRequest``s into tokens as fast as the hardware allows. Knows nothing of programs or
workflows; the runtime passes plain-data hints (``program_id``, ``hints``, ``priority``) and typed commands
(``commands.py``: ``Engine.send``), and reads one ``EngineFeedback`` (stats and cache events) when it plans.
May import: ``plait.cache``.
"""

from __future__ import annotations

from plait.cache import PrefixKV
from plait.engine.commands import (
    ENGINE_COMMANDS,
    Abort,
    AddRequest,
    EngineCommand,
    ExportPrefix,
    FlushPrefixCache,
    ForgetProgram,
    HintNextUse,
    ImportPrefix,
    Pin,
    Prefetch,
    Reserve,
    ResidentPrefix,
    SetPolicy,
    Stop,
    Unpin,
    Unreserve,
)
from plait.engine.default_model import default_model_path
from plait.engine.engine import Engine
from plait.engine.engine_config import EngineConfig
from plait.engine.engine_core import EngineCore, EngineStats
from plait.engine.engine_feedback import EngineFeedback
from plait.engine.engine_policy import EnginePolicy
from plait.engine.errors import (
    EngineError,
    EngineStoppedError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
)
from plait.engine.grammar import (
    ENFORCED_FORMATS,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    ParsedToolOutput,
    ToolCall,
    parse_tool_calls,
)
from plait.engine.model_config import DUMMY_SHAPES, ModelConfig
from plait.engine.request import (
    ChoiceScore,
    Completion,
    GenerateDelta,
    GenerateRequest,
    GenerateResult,
    TokenLogprob,
)
from plait.engine.sampling_params import SamplingParams, check_max_tokens_fit
from plait.engine.tokenizer import Tokenizer

__all__ = [
    "DUMMY_SHAPES",
    "ENFORCED_FORMATS",
    "ENGINE_COMMANDS",
    "TOOL_CALL_BEGIN",
    "TOOL_CALL_END",
    "Abort",
    "AddRequest",
    "ChoiceScore",
    "Completion",
    "Engine",
    "EngineCommand",
    "EngineConfig",
    "EngineCore",
    "EngineError",
    "EngineFeedback",
    "EnginePolicy",
    "EngineStats",
    "EngineStoppedError",
    "ExportPrefix",
    "FlushPrefixCache",
    "ForgetProgram",
    "GenerateDelta",
    "GenerateRequest",
    "GenerateResult",
    "HintNextUse",
    "ImportPrefix",
    "InvalidRequestError",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFoundError",
    "ParsedToolOutput",
    "Pin",
    "Prefetch",
    "PrefixKV",
    "Reserve",
    "ResidentPrefix",
    "SamplingParams",
    "SetPolicy",
    "Stop",
    "TokenLogprob",
    "Tokenizer",
    "ToolCall",
    "Unpin",
    "Unreserve",
    "check_max_tokens_fit",
    "default_model_path",
    "parse_tool_calls",
]
