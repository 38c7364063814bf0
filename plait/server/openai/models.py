"""The model the OpenAI-compatible API serves: its id (a clean slug), the names a request may use for it, its card."""

from __future__ import annotations

import re
from pathlib import Path

from plait.engine import DUMMY_SHAPES
from plait.server.errors import APIError
from plait.server.openai.responses import ModelCard
from plait.server.state import ServerState

DEFAULT_ALIAS = "default"  # always accepted as ``model``


def model_slug(name: str) -> str:
    """A clean model id from a file or model name: ``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct``."""
    stem = re.sub(r"\.(gguf|safetensors|bin)$", "", name.strip(), flags=re.IGNORECASE)
    stem = re.sub(r"[.\-_](i?q\d\w*|f16|f32|bf16|fp16|fp32)$", "", stem, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9.]+", "-", stem.lower()).strip("-.")
    return slug or "plait-default"


def served_model_id(state: ServerState) -> str:
    """``config.model_name`` when set, else a slug of the model file (or dummy shape) the engine loaded."""
    if state.config.model_name:
        return state.config.model_name
    cached = state.extras.get("openai_model_id")
    if cached is None:
        engine_config = state.engine.config
        model = engine_config.model
        if engine_config.weights == "dummy" or model in DUMMY_SHAPES:
            name = model
        elif model == "default":
            from plait.engine import default_model_path

            name = default_model_path().name
        else:
            name = Path(model).name
        cached = state.extras["openai_model_id"] = model_slug(name)
    return str(cached)


def check_model(state: ServerState, requested: str) -> str:
    """The served id when ``requested`` names the served model; 404 naming ``model`` otherwise."""
    served = served_model_id(state)
    if requested in {served, DEFAULT_ALIAS, state.model_name}:
        return served
    raise APIError(404, f"model '{requested}' is not served here; use '{served}' (see GET /v1/models)", field="model")


def model_card(state: ServerState) -> ModelCard:
    return ModelCard(id=served_model_id(state), created=int(state.started_at), max_model_len=state.engine.max_context)
